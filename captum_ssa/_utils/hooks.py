"""Observing layer outputs during a forward pass.

Every method of the package reads intermediate tensors through
:func:`run_and_capture`, so the rules below hold everywhere:

- the captured tensor is the layer's own output, and the rest of the network
  receives a *clone* of it, so an in-place op after the layer (``nn.ReLU(
  inplace=True)``) cannot overwrite what we captured (Captum issue #156);
- a layer that runs twice in one forward pass (a reused module) is an error,
  since "its output" would be ambiguous (Captum issue #1104);
- a layer that never runs is an error that says so;
- hooks are removed whatever happens.

With ``neuron_dim`` the captured tensor is the output with that axis moved to
dim 1, ``(N, neurons, ...)``, and the rest of the network receives it moved
back: code reading the captured tensors sees every layer's neurons along dim 1,
and gradients with respect to them flow through the whole network.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils._compat import _format_additional_forward_args


class ReusedLayerError(RuntimeError):
    """Raised when an observed layer runs more than once in one forward pass."""


class _StopForward(Exception):
    """Raised from a hook to skip the part of the network above the last layer."""


def layer_name(model: Optional[Module], layer: Module) -> str:
    """The layer's name in ``model.named_modules()``, or its class name."""
    if model is not None:
        for name, module in model.named_modules():
            if module is layer:
                return name or type(layer).__name__
    return type(layer).__name__


def unique_layer_names(model: Optional[Module], layers: Sequence[Module]) -> list[str]:
    """Each layer's :func:`layer_name`, with its position added where two are the same."""
    names = [layer_name(model, layer) for layer in layers]
    return [
        f"{name}#{position}" if names.count(name) > 1 else name
        for position, name in enumerate(names)
    ]


def model_of(forward_func: Callable[..., Any]) -> Optional[Module]:
    """The ``nn.Module`` behind ``forward_func`` (a module or its bound method)."""
    if isinstance(forward_func, Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, Module) else None


def check_layers_in_model(forward_func: Callable[..., Any], layers: Sequence[Module]) -> None:
    """Raise a clear error when a layer is not a submodule of the model."""
    for layer in layers:
        if not isinstance(layer, Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    model = model_of(forward_func)
    if model is None:
        return  # an arbitrary callable: "never ran" is checked after the forward
    members = {id(module) for module in model.modules()}
    for layer in layers:
        if id(layer) not in members:
            raise ValueError(
                f"layer {layer!r} is not part of the model "
                f"{type(model).__name__}; pass a module from model.modules()"
            )


def neuron_axis(neuron_dim: Optional[int], dims: int, layer: str = "the layer") -> int:
    """The non-negative position of the neuron axis in an output with ``dims`` dims.

    ``neuron_dim`` None means dim 1; negative values count from the end. The
    batch axis (dim 0) cannot hold neurons.
    """
    if dims < 2:
        raise ValueError(
            f"{layer} returns a tensor with {dims} dimension(s); a layer output needs a "
            "batch dimension and a neuron dimension"
        )
    if neuron_dim is None:
        return 1
    if not -dims <= neuron_dim < dims or neuron_dim % dims == 0:
        raise ValueError(
            f"neuron_dim={neuron_dim} does not name a neuron axis of the output of {layer}, "
            f"which has {dims} dimensions (dim 0 is the batch): use one of "
            f"{[*range(1, dims), *range(1 - dims, 0)]}"
        )
    return neuron_dim % dims


def call_forward(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    additional_forward_args: Any = None,
) -> Any:
    """Call ``forward_func(*inputs, *additional_forward_args)`` as Captum does."""
    extra = _format_additional_forward_args(additional_forward_args)
    return forward_func(*inputs, *(extra or ()))


def run_and_capture(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    layers: Sequence[Module],
    additional_forward_args: Any = None,
    stop_after_last: bool = False,
    neuron_dim: Optional[int] = None,
) -> tuple[Any, list[Tensor]]:
    """Run the model once and return its output and each layer's output.

    Args:
        forward_func: the model or any callable taking ``*inputs, *extra``.
        inputs: the formatted input tensors.
        layers: the modules whose outputs are captured.
        additional_forward_args: passed after the inputs, as in Captum.
        stop_after_last: stop the forward pass as soon as every layer has run
            (the model output is then ``None``); saves the cost of the layers
            above when re-evaluating. A reused module is only detected when
            it runs twice before the stop, so use it only after a full pass
            has checked the layers.
        neuron_dim: the axis of every layer's output that holds its neurons;
            it is moved to dim 1 in the captured tensors (see
            :func:`neuron_axis`). Default: None, dim 1 as it is.

    Returns:
        ``(model_output, [output of each layer])``.
    """
    captured: list[Optional[Tensor]] = [None] * len(layers)
    calls = [0] * len(layers)
    caller = threading.get_ident()

    def make_hook(position: int) -> Callable[[Module, Any, Any], Optional[Tensor]]:
        def hook(module: Module, _args: Any, output: Any) -> Optional[Tensor]:
            if threading.get_ident() != caller:
                return None  # someone else's forward pass of the same model
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {type(module).__name__} returns "
                    f"{type(output).__name__}; only layers that return a single "
                    "tensor can be observed"
                )
            calls[position] += 1
            if calls[position] > 1:
                raise ReusedLayerError(
                    f"layer {type(module).__name__} runs more than once in one "
                    "forward pass (a reused module); its output is ambiguous. "
                    "Use a separate module instance for each use."
                )
            axis = 1
            if neuron_dim is not None:  # other outputs (even 0-D ones) are captured as they are
                axis = neuron_axis(neuron_dim, output.dim(), type(module).__name__)
            # a moved view is what callers differentiate with respect to, so the
            # network must continue from it, not from the original output
            kept = output if axis == 1 else output.movedim(axis, 1)
            captured[position] = kept
            passed_on = kept.clone() if axis == 1 else kept.movedim(1, axis).clone()
            if stop_after_last and all(count > 0 for count in calls):
                raise _StopForward
            return passed_on

        return hook

    handles = [
        layer.register_forward_hook(make_hook(position)) for position, layer in enumerate(layers)
    ]
    model_output = None
    try:
        with contextlib.suppress(_StopForward):
            model_output = call_forward(forward_func, inputs, additional_forward_args)
    finally:
        for handle in handles:
            handle.remove()
    for layer, output in zip(layers, captured):
        if output is None:
            raise ValueError(
                f"layer {type(layer).__name__} did not run during the forward "
                "pass; is it part of the model and used by its forward?"
            )
    return model_output, [output for output in captured if output is not None]


def layer_function(
    forward_func: Callable[..., Any],
    layer: Module,
    additional_forward_args: Any = None,
) -> Callable[..., Tensor]:
    """``inputs -> output of layer``, a pure function for ``torch.func``."""

    def evaluate(*inputs: Tensor) -> Tensor:
        _, (output,) = run_and_capture(
            forward_func, inputs, [layer], additional_forward_args, stop_after_last=True
        )
        return output

    return evaluate


def no_grad_capture(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    layers: Sequence[Module],
    additional_forward_args: Any = None,
) -> list[Tensor]:
    """Layer outputs without building an autograd graph."""
    with torch.no_grad():
        return run_and_capture(forward_func, inputs, layers, additional_forward_args)[1]


@dataclass
class LayerCalls:
    """What :func:`observe_layer_calls` saw: call order and kept layer inputs."""

    order: list[int] = field(default_factory=list)
    inputs: dict[int, Tensor] = field(default_factory=dict)


@contextmanager
def observe_layer_calls(
    layers: Sequence[Module], keep_input: Sequence[bool]
) -> Iterator[LayerCalls]:
    """Record the order in which ``layers`` first run, and some of their inputs.

    A layer with ``keep_input`` set receives a clone of its first positional
    input, and that clone is recorded: nothing but the layer uses it, so an
    in-place operation elsewhere cannot change it or its autograd history.
    Hooks are removed whatever happens.
    """
    calls = LayerCalls()

    def make_hook(position: int) -> Callable[[Module, tuple[Any, ...]], Any]:
        def hook(_module: Module, args: tuple[Any, ...]) -> Any:
            if position in calls.order:
                return None  # a reused module: run_and_capture reports it
            calls.order.append(position)
            if keep_input[position] and args and isinstance(args[0], Tensor):
                kept = args[0].clone()
                calls.inputs[position] = kept
                return (kept, *args[1:])
            return None

        return hook

    handles = [
        layer.register_forward_pre_hook(make_hook(position))
        for position, layer in enumerate(layers)
    ]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
