"""Faithfulness by perturbation: selectivity (pixel flipping, AOPC) and DeepDIVE's
top-k flip test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from captum_ssa.evaluation._perturb import (
    as_baseline,
    class_scores,
    feature_order,
    per_example_targets,
)


@dataclass
class SelectivityResult:
    r"""
    Pixel-flipping curves and their area.

    Attributes:
        curves (Tensor): ``(N, steps + 1)``, the target's score after removing
                    0, m, 2m, ... of the most relevant features.
        removed (Tensor): ``(steps + 1,)``, how many features each column removed.
        aopc (Tensor): ``(N,)``, the area over the perturbation curve,
                    :math:`\frac{1}{L+1}\sum_{k=0}^{L} (s_0 - s_k)`.
    """

    curves: Tensor
    removed: Tensor
    aopc: Tensor


def _rank_of_features(order: Tensor) -> Tensor:
    """Inverse permutation: the position of each feature in the relevance order."""
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return ranks.scatter_(1, order, positions)


def selectivity(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    target: Any,
    baseline: Any = 0.0,
    features_per_step: int = 1,
    steps: Optional[int] = None,
    output: str = "probability",
    absolute: bool = False,
    rows_per_batch: int = 4096,
) -> SelectivityResult:
    r"""
    Selectivity, or pixel flipping (Bach et al. 2015; Samek et al., "Evaluating
    the visualization of what a deep neural network has learned", 2017,
    arXiv:1509.06321): remove the most relevant features first, replacing them
    by ``baseline``, and follow the target's score. A faithful map makes it
    fall fast, so a **larger** AOPC is better.

    The score is the softmax probability of the target class (``output="logit"``
    for the logit), so AOPC lies in [-1, 1] and is comparable across models.
    Features are ranked by signed attribution (evidence *for* the class first;
    ``absolute=True`` ranks by magnitude). All perturbed inputs of a chunk of
    steps run in one forward pass of at most ``rows_per_batch`` rows.

    Args:
        forward_func (Callable): The model.
        inputs (Tensor): ``(N, ...)`` examples.
        attributions (Tensor): Shaped like ``inputs``.
        target (int, list or Tensor): The class of each example.
        baseline (float or Tensor, optional): The value of a removed feature,
                    broadcastable to ``inputs``. Default: 0.
        features_per_step (int, optional): m, features removed per step. Default: 1.
        steps (int, optional): L, the number of steps; default: until every
                    feature is removed.
        output (str, optional): ``"probability"`` or ``"logit"``.
        absolute (bool, optional): Rank by ``|attribution|``. Default: False.
        rows_per_batch (int, optional): The most perturbed inputs per forward pass.

    Returns:
        :class:`SelectivityResult`.

    Examples::

        >>> result = selectivity(model, x, Saliency(model).attribute(x, target=y), y)
        >>> result.aopc.mean()
    """
    features = inputs[0].numel()
    if steps is None:
        steps = math.ceil(features / features_per_step)
    targets = per_example_targets(target, len(inputs), inputs.device)
    ranks = _rank_of_features(feature_order(attributions, absolute))
    flat = inputs.detach().flatten(1)
    flat_baseline = as_baseline(baseline, inputs).flatten(1)
    removed = torch.arange(steps + 1, device=inputs.device) * features_per_step
    steps_per_chunk = max(1, rows_per_batch // len(inputs))
    scores = []
    for chunk in removed.split(steps_per_chunk):
        masks = ranks[None] < chunk[:, None, None]  # (S, N, F)
        perturbed = torch.where(masks, flat_baseline[None], flat[None])
        batch = perturbed.reshape(-1, *inputs.shape[1:])
        chunk_scores = class_scores(forward_func, batch, targets.repeat(len(chunk)), output)
        scores.append(chunk_scores.reshape(len(chunk), len(inputs)))
    curves = torch.cat(scores).T
    aopc = (curves[:, :1] - curves).mean(1)
    return SelectivityResult(curves=curves, removed=removed.clamp(max=features), aopc=aopc)


@dataclass
class TopKFlipResult:
    r"""
    DeepDIVE's flip tests.

    Attributes:
        flipped (Tensor): ``(N, K)`` bool, whether perturbing the k most important
                    features (column k-1) changes the predicted class.
        second_flips (Tensor): ``(N,)`` bool, perturbing only the 2nd-most
                    important feature changes the prediction.
        first_flips (Tensor): ``(N,)`` bool, the same for the most important alone.
    """

    flipped: Tensor
    second_flips: Tensor
    first_flips: Tensor

    @property
    def flip_rate(self) -> Tensor:
        """``(K,)``: the fraction of examples flipped by the top 1, 2, ..., K features."""
        return self.flipped.float().mean(0)

    @property
    def second_implies_first(self) -> float:
        """Among examples whose 2nd-most important feature flips the prediction,
        the fraction where the most important one does too (NaN if none does)."""
        if not self.second_flips.any():
            return math.nan
        return self.first_flips[self.second_flips].float().mean().item()


def _perturbed(flat: Tensor, masks: Tensor, how: str, baseline: Tensor, shift: Tensor) -> Tensor:
    """Apply one perturbation where ``masks`` is set; ``masks`` broadcasts over ``flat``."""
    if how == "baseline":
        replacement = baseline.expand_as(flat)
    elif how == "negate":
        replacement = -flat
    elif how == "shift":
        replacement = flat - shift
    else:
        raise ValueError(f"perturbation must be 'baseline', 'negate' or 'shift', not {how!r}")
    return torch.where(masks, replacement, flat)


def topk_flip(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Tensor,
    k_max: int = 5,
    perturbation: str = "baseline",
    baseline: Any = 0.0,
    shift: float = 1.0,
) -> TopKFlipResult:
    r"""
    The top-k flip test of DeepDIVE (Coimbra Vera, "Interpreting deep neural
    networks through backpropagation", IST Lisbon): perturb the k features of
    largest ``|attribution|`` and report how often the predicted class changes,
    for k = 1..K; and the check "when perturbing the 2nd-most important
    feature alone flips the prediction, does the most important alone flip it
    too?" (the thesis found 100%).

    A flip is a change of ``argmax`` from the unperturbed prediction. A
    perturbed feature is replaced by ``baseline`` (``perturbation="baseline"``),
    negated (``"negate"``), or moved by ``shift`` against its attribution's
    sign, :math:`x_j - \text{shift}\cdot\operatorname{sign}(a_j)` (``"shift"``,
    the direction that should lower the explained score).

    Args:
        forward_func (Callable): The model (logits or probabilities).
        inputs (Tensor): ``(N, ...)``.
        attributions (Tensor): Shaped like ``inputs``.
        k_max (int, optional): K. Default: 5.
        perturbation (str, optional): ``"baseline"``, ``"negate"`` or ``"shift"``.
        baseline (float or Tensor, optional): For ``"baseline"``. Default: 0.
        shift (float, optional): For ``"shift"``. Default: 1.

    Returns:
        :class:`TopKFlipResult`.

    Examples::

        >>> result = topk_flip(model, x, IntegratedGradients(model).attribute(x, target=y))
        >>> result.flip_rate, result.second_implies_first
    """
    flat = inputs.detach().flatten(1)
    order = feature_order(attributions, absolute=True)
    ranks = _rank_of_features(order)
    flat_baseline = as_baseline(baseline, inputs).flatten(1)
    flat_shift = shift * attributions.detach().flatten(1).sign()
    with torch.no_grad():
        predicted = forward_func(inputs).argmax(-1)
    # K cumulative masks, then the 1st and the 2nd feature alone: one forward pass
    cumulative = ranks[None] < torch.arange(1, k_max + 1, device=flat.device)[:, None, None]
    alone = torch.stack([ranks == 0, ranks == 1])
    masks = torch.cat([cumulative, alone])  # (K + 2, N, F)
    perturbed = _perturbed(flat[None], masks, perturbation, flat_baseline[None], flat_shift[None])
    with torch.no_grad():
        classes = forward_func(perturbed.reshape(-1, *inputs.shape[1:])).argmax(-1)
    flips = (classes.reshape(len(masks), len(inputs)) != predicted[None]).T
    return TopKFlipResult(
        flipped=flips[:, :k_max], first_flips=flips[:, k_max], second_flips=flips[:, k_max + 1]
    )
