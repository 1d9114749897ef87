"""The classes LayeredInfluence compares: the model's own labels of its points, and
the class each explained example is taken against (Captum-style targets)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from captum_ssa._utils.model_output import output_tensor

ClassTarget = Union[int, Tensor, np.ndarray, Sequence[int], None]


def model_labels(model_output: Any) -> Tensor:
    """The model's labels: argmax over dim 1, or ``output > 0`` for one logit."""
    output = _scores(model_output)
    if _class_count(output) == 2 and (output.dim() == 1 or output.shape[1] == 1):
        return (output.reshape(-1) > 0).long()
    return output.argmax(1)


def _scores(model_output: Any) -> Tensor:
    """The model's output (as the constructor's ``output=`` selects it) as scores."""
    output = output_tensor(
        model_output, "LayeredInfluence (which labels points by the model's prediction)"
    )
    if output.dim() == 0:
        raise TypeError(
            "LayeredInfluence labels points by the model's prediction, so the "
            "model must return a tensor of scores shaped (N, classes) or (N,); "
            "got a scalar"
        )
    return output


def _class_count(output: Tensor) -> int:
    """The number of classes of a classifier output: its columns, 2 for one logit."""
    if output.dim() > 2:
        raise ValueError(
            "LayeredInfluence needs a classifier output shaped (N, classes) or "
            f"(N,), got {tuple(output.shape)}"
        )
    return 2 if output.dim() == 1 or output.shape[1] == 1 else output.shape[1]


def class_targets(model_output: Any, target: ClassTarget) -> Tensor:
    """One class per example: ``target`` in any of Captum's forms for an
    ``(N, classes)`` output, or the model's prediction where it is None."""
    if target is None:
        return model_labels(model_output)
    output = _scores(model_output)
    classes, count = _class_count(output), len(output)
    if isinstance(target, (numbers.Integral, np.ndarray)) and not isinstance(target, bool):
        target = torch.as_tensor(target)
    elif isinstance(target, list) and all(
        isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in target
    ):
        target = torch.tensor(target, dtype=torch.long)
    if (
        not isinstance(target, Tensor)
        or target.dtype == torch.bool
        or target.is_floating_point()
        or target.is_complex()
        or target.dim() > 1
    ):
        raise ValueError(
            "target must be a class index: an int, or one int per example (a 1-D "
            f"tensor, array or list of {count}); got {target!r}"
        )
    if target.dim() == 1 and len(target) != count:
        raise ValueError(
            f"target gives {len(target)} classes for {count} examples; give one "
            "class per example or a single int"
        )
    if bool(((target < 0) | (target >= classes)).any()):
        raise ValueError(
            f"target must be a class from 0 to {classes - 1} (the model output has "
            f"{classes} classes), got {target.tolist()}"
        )
    return target.to(device=output.device, dtype=torch.long).expand(count)
