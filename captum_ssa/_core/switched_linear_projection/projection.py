r"""Per-example arithmetic of a switched linear projection.

Once the network has given a neuron's activity :math:`v` and switched weights
:math:`w` (see :mod:`.neuron_selection`), everything else
:class:`~captum_ssa.SwitchedLinearProjection` returns is tensor arithmetic,
one value per example over every input tensor: the centre
:math:`c = x - (v / \lVert w \rVert^2) w`, the contributions
:math:`(x - x_0) \odot w` from the centre or from Captum-style ``baselines``,
and the sums the bias and the convergence delta are made of.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_ssa._utils._compat import BaselineType, _format_baseline, _tensorize_baseline


def per_example_sum(tensors: tuple[Tensor, ...]) -> Tensor:
    """The sum over every feature of every input tensor, one value per example."""
    return torch.stack([t.reshape(t.shape[0], -1).sum(1) for t in tensors]).sum(0)


def per_example_dot(left: tuple[Tensor, ...], right: tuple[Tensor, ...]) -> Tensor:
    """``<left, right>`` over every input tensor, one value per example."""
    return per_example_sum(tuple(a * b for a, b in zip(left, right)))


def _step_to_centre(activity: Tensor, weights: tuple[Tensor, ...]) -> Tensor:
    """``v / ||w||^2`` per example (x - c = step * w), and 0 where ``w = 0``."""
    squared_norm = per_example_dot(weights, weights)
    safe_norm = torch.where(squared_norm > 0, squared_norm, torch.ones_like(squared_norm))
    return torch.where(squared_norm > 0, activity / safe_norm, torch.zeros_like(activity))


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    """(N,) values shaped to multiply a (N, ...) tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def centre(
    inputs: tuple[Tensor, ...], activity: Tensor, weights: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """The neuron's centre ``x - (v / ||w||^2) w`` per example, ``x`` itself where ``w = 0``."""
    step = _step_to_centre(activity, weights)
    return tuple(x - _broadcast(step, w) * w for x, w in zip(inputs, weights))


def centred_contributions(activity: Tensor, weights: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The contributions ``(x - c) * w`` from the centre ``c``.

    ``x - c = (v / ||w||^2) w``, so ``step * w^2`` is the exact product.
    """
    step = _step_to_centre(activity, weights)
    return tuple(_broadcast(step, w) * w * w for w in weights)


def contributions(
    end: tuple[Tensor, ...], start: tuple[Tensor, ...], weights: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """The contributions ``(end - start) * w`` of the linear model between two points."""
    return tuple((x - x0) * w for x, x0, w in zip(end, start, weights))


def start_points(baselines: BaselineType, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Captum-style ``baselines`` as one tensor per input, each shaped like it."""
    try:
        formatted = _format_baseline(baselines, inputs)
    except AssertionError as error:
        raise TypeError(
            f"baselines must be a number, a tensor or a tuple of those, got {baselines!r}"
        ) from error
    if len(formatted) != len(inputs):
        raise ValueError(
            f"baselines has {len(formatted)} entries for {len(inputs)} input tensors; "
            "give one baseline (a number or a tensor) per input"
        )
    # A 0-dim tensor is a number to Captum's users but not to _tensorize_baseline.
    numbers_or_tensors = tuple(
        b.item() if isinstance(b, Tensor) and b.dim() == 0 else b for b in formatted
    )
    points = []
    tensorized = _tensorize_baseline(inputs, numbers_or_tensors)
    for position, (baseline, tensor) in enumerate(zip(tensorized, inputs)):
        try:
            point = torch.broadcast_to(baseline, tensor.shape)
        except RuntimeError as error:
            raise ValueError(
                f"baselines[{position}] is shaped {tuple(baseline.shape)}; it must be "
                f"a number or a tensor broadcastable to the input shaped "
                f"{tuple(tensor.shape)} (batch 1 or the input's batch size)"
            ) from error
        points.append(point.detach().to(dtype=tensor.dtype, device=tensor.device))
    return tuple(points)
