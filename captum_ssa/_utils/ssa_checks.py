"""Checks and readings of SSA's arguments that need the first forward pass.

The layer order and dependencies, the neuron axes, and Captum's ``target`` or
a ``top_neurons`` set read as starting neurons of the top layer.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import Module

from captum_ssa._utils.hooks import model_of
from captum_ssa._utils.segment import depends_on

# Captum's target: one class for every example, or one class per example.
Target = Union[int, tuple[int, ...], list[int], Tensor, np.ndarray]
# A set of starting neurons of the top layer.
NeuronSet = Union[int, Sequence[int], set[int], Tensor, np.ndarray]
# Modules whose 3-D outputs are (N, channels, length): dim 1 holds their neurons.
_CHANNEL_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer_tensor(values: Any, argument: str, expected: str) -> Tensor:
    """``values`` as a CPU ``long`` tensor, or a TypeError naming the argument."""
    try:
        tensor: Optional[Tensor] = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        tensor = None
    if (
        tensor is None
        or tensor.is_floating_point()
        or tensor.is_complex()
        or tensor.dtype == torch.bool
        or tensor.numel() == 0
    ):
        raise TypeError(f"{argument} must be {expected}, got {values!r}")
    return tensor.long().cpu()


def tuple_target_message(target: Any, top_shape: tuple[int, ...], axis: int) -> str:
    return (
        f"target {target!r} holds a tuple, which in Captum names one element of a "
        "multi-dimensional output, not a neuron. SSA's neurons are the positions along "
        f"the neuron axis, dim {axis} of the top layer's output {top_shape} (see "
        "neuron_dim); pass an int, or one int per example"
    )


def target_neurons(
    target: Any, batch_size: int, top_shape: tuple[int, ...], axis: int
) -> tuple[Tensor, bool]:
    """Captum's ``target`` as neuron indices, and whether there is one per example."""
    if isinstance(target, tuple):
        if len(top_shape) == 2 and len(target) == 1 and is_integer(target[0]):
            return torch.tensor([int(target[0])]), False  # Captum's index (k,) of (N, C)
        raise ValueError(tuple_target_message(target, top_shape, axis))
    if is_integer(target):
        return torch.tensor([int(target)]), False
    if isinstance(target, list):
        if any(isinstance(entry, tuple) for entry in target):
            raise ValueError(tuple_target_message(target, top_shape, axis))
        if len(target) != batch_size:
            raise ValueError(
                "a list target gives one class per example (Captum's convention): it needs "
                f"{batch_size} entries, got {len(target)}; for a set of starting neurons "
                "pass top_neurons=[...]"
            )
    values = integer_tensor(
        target, "target", "an int, or one int per example (a list, 1-D tensor or array)"
    )
    if values.numel() == 1 and not isinstance(target, list):
        return values.reshape(1), False  # Captum reads a one-element tensor as one class
    if values.dim() != 1 or len(values) != batch_size:
        raise ValueError(
            "a tensor or array target gives one class per example (Captum's convention): "
            f"it must be 1-D with {batch_size} entries, got shape {tuple(values.shape)}; for "
            "a set of starting neurons pass top_neurons=[...]"
        )
    return values, True


def neuron_set(top_neurons: Any) -> Tensor:
    """``top_neurons`` as a 1-D tensor of neuron indices (a set: order and repeats ignored)."""
    if is_integer(top_neurons):
        return torch.tensor([int(top_neurons)])
    values = list(top_neurons) if isinstance(top_neurons, (set, frozenset)) else top_neurons
    indices = integer_tensor(
        values,
        "top_neurons",
        "an int or a non-empty list, tuple, set, 1-D tensor or array of ints",
    )
    if indices.dim() > 1:
        raise ValueError(
            "top_neurons is a set of neuron indices of the top layer, so at most 1-D; got "
            f"shape {tuple(indices.shape)}"
        )
    return indices.reshape(-1)


def check_target_on_output(model_output: Any, top_shape: tuple[int, ...], top_name: str) -> None:
    """A ``target`` picks outputs of the model: the top layer must be its output."""
    if not isinstance(model_output, Tensor) or tuple(model_output.shape) != top_shape:
        shape = tuple(model_output.shape) if isinstance(model_output, Tensor) else None
        raise ValueError(
            f"target picks outputs of the model, but the top layer {top_name!r} "
            f"(output {top_shape}) is not the model's output ({shape}); "
            "pass top_neurons to pick neurons of the top layer"
        )


def starting_neurons(
    target: Optional[Target],
    top_neurons: Optional[NeuronSet],
    top_output: Tensor,
    top_shape: tuple[int, ...],
    axis: int,
    model_output: Any,
    top_name: str,
) -> tuple[Tensor, Optional[Tensor]]:
    """The starting set S_L, and each example's target (None: every example counts
    for every starting neuron).

    ``top_output`` has its neurons along dim 1; ``top_shape`` is the top layer's own
    output shape, whose neuron axis is ``axis``.
    """
    if target is not None and top_neurons is not None:
        raise ValueError(
            "give target or top_neurons, not both: target is Captum's (one class, or one "
            "per example), top_neurons a set of neurons of the top layer"
        )
    batch_size, size = top_output.shape[0], top_output.shape[1]
    if target is None and top_neurons is None:
        return torch.arange(size), None
    if target is not None:
        check_target_on_output(model_output, top_shape, top_name)
        values, per_example = target_neurons(target, batch_size, top_shape, axis)
        argument = "target"
    else:
        values, per_example = neuron_set(top_neurons), False
        argument = "top_neurons"
    outside = values[(values < 0) | (values >= size)]
    if len(outside):
        raise ValueError(
            f"{argument} {outside.unique().tolist()} out of range: the top layer "
            f"{top_name!r} has {size} neurons (0 to {size - 1}) along dim {axis}"
        )
    return values.unique(), values if per_example else None


def check_forward_order(order: list[int], names: list[str], layers: list[Module]) -> None:
    if order != sorted(order):
        ran = [names[position] for position in order]
        nested = [
            (names[outer], names[inner])
            for outer, container in enumerate(layers)
            for inner, layer in enumerate(layers)
            if outer != inner and any(module is layer for module in container.modules())
        ]
        hint = "".join(
            f"; {outer!r} contains {inner!r}, so it starts running first: list layers along "
            "one path of the computation, not a block and a module inside it"
            for outer, inner in nested[:1]
        )
        raise ValueError(
            f"layers must be listed in the order the forward pass runs them, lowest "
            f"first: got {names}, but the model runs them as {ran}{hint}"
        )


def check_dependencies(outputs: list[Tensor], names: list[str]) -> None:
    """Each listed layer must be computed from the one listed below it."""
    for upper in range(len(outputs) - 1, 0, -1):
        if not depends_on(outputs[upper], outputs[upper - 1]):
            raise ValueError(
                f"the output of {names[upper]!r} does not depend on the output of "
                f"{names[upper - 1]!r} (one is a module inside the other, or they lie on "
                "parallel branches), so every relevance between them would be zero; list "
                "layers along one path of the computation, each computed from the one "
                "listed before it"
            )


def sequence_axis_layers(
    forward_func: Callable[..., Any],
    layers: list[Module],
    names: list[str],
    outputs: list[Tensor],
) -> list[str]:
    """Listed layers whose 3-D output is probably (N, sequence, features)."""
    model = model_of(forward_func)
    modules = list(model.modules()) if model is not None else layers
    has_convolution = any(isinstance(module, nn.modules.conv._ConvNd) for module in modules)
    suspects = []
    for layer, name, output in zip(layers, names, outputs):
        if output.dim() != 3 or isinstance(layer, _CHANNEL_FIRST):
            continue
        # an activation after a Conv1d is (N, C, L) too; only a conv-free model tells
        parameter_free = next(layer.parameters(), None) is None
        if not (parameter_free and has_convolution):
            suspects.append(name)
    return suspects
