"""Shared pieces of the perturbation metrics: feature ranks, class scores, targets."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


def per_example_targets(target: Any, batch: int, device: torch.device) -> Tensor:
    """Captum's int / list / tensor class target as one class index per example."""
    if target is None:
        raise ValueError("the perturbation metrics need a target class per example")
    targets = torch.as_tensor(target, device=device).reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise ValueError(f"target has {targets.numel()} entries for {batch} examples")
    return targets.long()


def feature_order(attributions: Tensor, absolute: bool) -> Tensor:
    """Per example, the flattened feature indices from most to least relevant
    (a stable sort, so ties keep their feature order)."""
    scores = attributions.detach().flatten(1)
    if absolute:
        scores = scores.abs()
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def class_scores(
    forward_func: Callable[..., Tensor], inputs: Tensor, targets: Tensor, output: str
) -> Tensor:
    """The target class's logit or softmax probability for every example."""
    with torch.no_grad():
        logits = forward_func(inputs)
    if output == "probability":
        logits = logits.softmax(-1)
    elif output != "logit":
        raise ValueError(f"output must be 'probability' or 'logit', not {output!r}")
    return logits.gather(1, targets[:, None])[:, 0]


def as_baseline(baseline: Any, inputs: Tensor) -> Tensor:
    """A number or a tensor broadcastable to the inputs, as a full input-shaped tensor."""
    return torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device).expand_as(inputs)
