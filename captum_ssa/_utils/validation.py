"""Checking user input once, with errors that name the problem."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from torch import Tensor

from captum_ssa._utils._compat import _format_tensor_into_tuples

NeuronSelector = Union[int, tuple[Union[int, slice], ...], Callable[[Tensor], Tensor]]
IndexSelector = Union[int, tuple[Union[int, slice], ...]]


def prepare_inputs(inputs: Any, integers_allowed: bool = False) -> tuple[Tensor, ...]:
    """Format ``inputs`` into a tuple of fresh leaf tensors; the floating-point ones
    require grad.

    The user's tensors are never modified: each is detached, so their
    ``requires_grad`` and any graph they belong to stay as they were. With
    ``integers_allowed`` (for code that takes no gradient with respect to the
    inputs) integer and bool tensors, such as token ids, are accepted as they
    are: they cannot require grad, and hold no NaN or Inf to check. Without it
    they are an error that names ``embedding_layer=``, the route from token ids
    for the methods that differentiate with respect to their inputs.
    """
    if not isinstance(inputs, (Tensor, tuple)):
        raise TypeError(
            f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}"
        )
    formatted = _format_tensor_into_tuples(inputs)
    if len(formatted) == 0:
        raise ValueError("inputs is an empty tuple")
    for position, tensor in enumerate(formatted):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"inputs[{position}] must be a tensor, got {type(tensor).__name__}")
        if tensor.dim() == 0:
            raise ValueError(f"inputs[{position}] is a scalar; dimension 0 must be the batch")
        _check_dtype(tensor, position, integers_allowed)
        if tensor.shape[0] == 0:
            raise ValueError(f"inputs[{position}] holds no examples (batch size 0)")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            kind = "NaN" if torch.isnan(tensor).any() else "an infinite value (Inf)"
            raise ValueError(f"inputs[{position}] contains {kind}; inputs must be finite")
    sizes = {tensor.shape[0] for tensor in formatted}
    if len(sizes) > 1:
        raise ValueError(f"all input tensors need the same batch size, got {sorted(sizes)}")
    return tuple(fresh_leaf(tensor) for tensor in formatted)


def fresh_leaf(tensor: Tensor) -> Tensor:
    """``tensor`` detached, requiring grad where it is floating point (an integer
    tensor cannot)."""
    detached = tensor.detach()
    return detached.requires_grad_() if detached.is_floating_point() else detached


def _check_dtype(tensor: Tensor, position: int, integers_allowed: bool) -> None:
    """Floating-point inputs, or integer/bool ones where ``integers_allowed``."""
    if tensor.is_floating_point() or (integers_allowed and not tensor.is_complex()):
        return
    if tensor.is_complex():
        raise TypeError(
            f"inputs[{position}] has dtype {tensor.dtype}; complex inputs are not supported"
        )
    raise TypeError(
        f"inputs[{position}] has dtype {tensor.dtype}; gradients with respect to the "
        "inputs need a floating-point input. For token ids, pass embedding_layer= (the "
        "model's embedding module) to the constructor: the attribution is then to that "
        "layer's output, as Captum's LayerIntegratedGradients does"
    )


def positive_int(name: str, value: Any, optional: bool = True) -> Optional[int]:
    """``value`` as an ``int`` >= 1 (NumPy integers too), None where allowed, or a
    clear error naming the argument."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "a positive integer" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def device_ids_checked(device_ids: Any) -> Optional[list[int]]:
    """Captum's ``device_ids`` (a list of CUDA device indices, or None) as a list of ints."""
    if device_ids is None:
        return None
    if not isinstance(device_ids, (list, tuple)) or not all(
        isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in device_ids
    ):
        raise TypeError(
            "device_ids must be None or a list of CUDA device indices (ints), as in "
            f"Captum and torch.nn.DataParallel, got {device_ids!r}"
        )
    return [int(i) for i in device_ids]


def check_neuron_selector(layer_output: Tensor, selector: NeuronSelector) -> None:
    """Raise a clear error for an index selector that does not fit the layer output."""
    if callable(selector):
        return
    if isinstance(selector, bool):
        raise TypeError(
            "neuron_selector must be an int, a tuple of ints/slices or a callable, not a "
            "bool; to attribute to the layer's input pass attribute_to_neuron_input=True "
            "by keyword"
        )
    index = (selector,) if isinstance(selector, int) else selector
    if not isinstance(index, tuple) or not all(
        isinstance(i, (int, slice)) and not isinstance(i, bool) for i in index
    ):
        raise TypeError(
            "neuron_selector must be an int, a tuple of ints/slices or a callable, "
            f"got {selector!r}"
        )
    neuron_shape = tuple(layer_output.shape[1:])
    if len(index) > len(neuron_shape):
        raise ValueError(
            f"neuron_selector {selector!r} has {len(index)} indices but the layer "
            f"output has {len(neuron_shape)} dimensions after the batch: {neuron_shape}"
        )
    for dim, (i, size) in enumerate(zip(index, neuron_shape)):
        if isinstance(i, int) and not -size <= i < size:
            raise ValueError(
                f"neuron_selector {selector!r} is out of range: index {i} in "
                f"dimension {dim + 1} of a layer output shaped {neuron_shape}"
            )


def selected_units(layer_output: Tensor, selector: IndexSelector, method: str) -> Tensor:
    """The units ``selector`` picks from every example's layer output: a boolean
    mask shaped like one example's output, ``layer_output.shape[1:]``.

    Only Captum's index forms (an int, a tuple of ints and slices after the batch
    dimension) name a set of units; a callable selector returns a value computed
    from them, which names none.
    """
    if callable(selector):
        raise TypeError(
            f"{method} takes neuron_selector as an int or a tuple of ints/slices (the "
            "units of the layer output it covers), not a callable: a callable returns a "
            "value computed from the units, not a set of units"
        )
    check_neuron_selector(layer_output, selector)
    index = (selector,) if isinstance(selector, int) else selector
    mask = torch.zeros(layer_output.shape[1:], dtype=torch.bool, device=layer_output.device)
    mask[index] = True
    return mask
