"""One neuron of a layer's output: choosing it, and reading it from the network.

:class:`~captum_ssa.SwitchedLinearProjection` projects one neuron per example,
chosen in the layer's output either with Captum's ``target`` (as it chooses a
model output) or with ``neuron_selector`` (as Captum's neuron methods do).
:func:`select_neuron` turns either into one activity per example, with errors
that name the argument and say what would select one neuron of that layer;
:func:`activity_and_weights` and :func:`activity_at` run the network to get
that activity, and its gradient with respect to the inputs (the switched
weights).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch
from captum.attr import NeuronAttribution
from torch import Tensor

from captum_ssa._utils._compat import (
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _select_targets,
    _verify_select_neuron,
)
from captum_ssa._utils.hooks import run_and_capture
from captum_ssa._utils.linearity import warn_if_not_piecewise_linear
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.validation import NeuronSelector, check_neuron_selector, prepare_inputs


def _what_selects_one_neuron(neuron_shape: tuple[int, ...]) -> str:
    """How to pick one value per example from a layer output of this shape."""
    if len(neuron_shape) == 1:
        return (
            f"an int in [0, {neuron_shape[0]}), or a 1-D tensor or list of such ints "
            "(one per example)"
        )
    if len(neuron_shape) == 3:
        names: tuple[str, ...] = ("c", "h", "w")
    else:
        names = ("c", *(f"i{dim}" for dim in range(1, len(neuron_shape))))
    index = "(" + ", ".join(names) + ")"
    spatial = tuple(range(1, len(neuron_shape)))
    return (
        f"a tuple of {len(neuron_shape)} indices {index}, or a list of such tuples "
        "(one per example); for a whole channel give instead a neuron_selector "
        f"such as `lambda out: out[:, c].mean({spatial})`"
    )


def _select_target(layer_output: Tensor, target: TargetType) -> Tensor:
    """Captum's ``target`` applied to the layer output, with errors naming ``target``."""
    shape = tuple(layer_output.shape)
    expected = _what_selects_one_neuron(shape[1:])
    if callable(target):
        raise TypeError(
            "target is a callable; pass it as neuron_selector=... (the second "
            "positional argument of attribute is target, as in Captum)"
        )
    if isinstance(target, bool):
        raise ValueError(f"target must be an index, not a bool; expected {expected}")
    if isinstance(target, numbers.Integral):
        target = int(target)  # NumPy integers, which Captum's helper does not accept
    try:
        selected = _select_targets(layer_output, target)
    except (AssertionError, IndexError, RuntimeError, TypeError) as error:
        raise ValueError(
            f"target {target!r} does not select a neuron of the layer output shaped "
            f"{shape} ({error}); expected {expected}"
        ) from error
    if selected.shape != (shape[0],):
        raise ValueError(
            f"target {target!r} selects {tuple(selected.shape[1:])} values per example "
            f"from the layer output shaped {shape}, not one; expected {expected}"
        )
    return selected


def select_neuron(
    layer_output: Tensor, target: TargetType, neuron_selector: Optional[NeuronSelector]
) -> Tensor:
    """The selected neuron's activity, one value per example (N,)."""
    if target is not None and neuron_selector is not None:
        raise ValueError(
            "give either target or neuron_selector, not both: target selects a "
            "neuron of the layer output as Captum's target selects a model output, "
            "neuron_selector is the general form (int, tuple or callable)"
        )
    batch_size = layer_output.shape[0]
    if target is not None:
        return _select_target(layer_output, target)
    if neuron_selector is None:
        if layer_output[0].numel() != 1:
            raise ValueError(
                "give target or neuron_selector: the layer output is shaped "
                f"{tuple(layer_output.shape)}, more than one value per example"
            )
        return layer_output.reshape(batch_size)
    check_neuron_selector(layer_output, neuron_selector)
    activity = _verify_select_neuron((layer_output,), neuron_selector)
    if activity.shape != (batch_size,):
        raise ValueError(
            "neuron_selector must pick one value per example, a tensor "
            f"shaped ({batch_size},); got {tuple(activity.shape)}"
        )
    return activity


def activity_and_weights(
    attribution: NeuronAttribution,
    inputs: TensorOrTupleOfTensorsGeneric,
    target: TargetType,
    additional_forward_args: Any,
    neuron_selector: Optional[NeuronSelector],
    check_linearity: bool,
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...], bool]:
    """One forward and one backward of ``attribution``'s model to its layer:
    ``(inputs, activity (N,), weights, warned)``, where ``warned`` says whether,
    asked to ``check_linearity``, it warned that the network is not piecewise
    linear."""
    forward_func, layer = attribution.forward_func, attribution.layer
    prepared = prepare_inputs(inputs)
    with untouched_model(forward_func):
        _, (layer_output,) = run_and_capture(
            forward_func,
            prepared,
            [layer],
            additional_forward_args,
        )
        activity = select_neuron(layer_output, target, neuron_selector)
        warned = check_linearity and warn_if_not_piecewise_linear(
            type(attribution).__name__, activity, prepared
        )
        # Examples do not interact in eval mode, so the gradient of the sum
        # holds every example's own switched weights.
        weights = torch.autograd.grad(
            activity.sum(), prepared, allow_unused=True, materialize_grads=True
        )
    return (
        tuple(t.detach() for t in prepared),
        activity.detach(),
        tuple(w.detach() for w in weights),
        warned,
    )


def activity_at(
    attribution: NeuronAttribution,
    points: tuple[Tensor, ...],
    target: TargetType,
    additional_forward_args: Any,
    neuron_selector: Optional[NeuronSelector],
) -> Tensor:
    """The network's actual activity of the selected neuron at ``points`` (N,)."""
    forward_func, layer = attribution.forward_func, attribution.layer
    with untouched_model(forward_func), torch.no_grad():
        _, (layer_output,) = run_and_capture(
            forward_func,
            points,
            [layer],
            additional_forward_args,
        )
        return select_neuron(layer_output, target, neuron_selector)
