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

The capture is keyed by the call, not by the thread: every call of a listed
layer while the capture runs is its own, from whatever thread runs it (a
forward that runs the model in a worker thread, as serving wrappers do). Two
captures that hook the same module at once would then record each other's
calls, so a capture claims the modules it hooks (:func:`claimed_modules`) and
a second capture of any of them, in another thread, waits for it; captures of
modules that are apart run at the same time. ``model_state.untouched_model``
claims every module of the model for a whole explanation the same way, so two
explanations of one model, or of a model and a wrapper of it, take turns.
What no claim can tell apart is a forward of the same modules by code outside
any explanation (a serving thread calling the model meanwhile): it counts as
the explanation's own, so run such code on another copy of the model.

``nn.DataParallel`` on two or more GPUs runs a *copy* of each layer per device
(its replicas share the layer's hooks), each on a chunk of the batch and in
its own thread. The layer's output is then split across devices and autograd
graphs, so it is not one tensor the methods can take gradients with respect
to: that is an error that says to explain the wrapped model (``.module``) on
one device, which computes the same function. On the CPU, or with a single
device, DataParallel calls the wrapped model itself and nothing changes.

Layers are named as the user's model names them (:func:`layer_name`): the
level a wrapper adds (DataParallel's and DistributedDataParallel's
``module``, ``torch.compile``'s ``_orig_mod``) is left out of the names.

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
from torch.nn.parallel import DataParallel, DistributedDataParallel

from captum_ssa._utils._compat import _format_additional_forward_args
from captum_ssa._utils.model_output import ExplainedForward


class ReusedLayerError(RuntimeError):
    """Raised when an observed layer runs more than once in one forward pass."""


class _StopForward(Exception):
    """Raised from a hook to skip the part of the network above the last layer."""


class LayerInOtherThreadError(NotImplementedError):
    """Raised when a layer runs in another thread where its caller needs it in its own:
    ``torch.func``'s transforms are per thread and do not follow a forward pass
    into a worker thread (there the layer computes without the transform)."""


def _adds_a_level(parent: Module, name: str) -> bool:
    """Whether ``parent``'s child ``name`` is the model a wrapper holds, a level the
    user never wrote: DataParallel's and DistributedDataParallel's ``module``,
    ``torch.compile``'s ``_orig_mod``."""
    return name == "_orig_mod" or (
        name == "module" and isinstance(parent, (DataParallel, DistributedDataParallel))
    )


def user_model(model: Module) -> Module:
    """The model inside the wrappers around ``model`` (DataParallel, DistributedDataParallel,
    ``torch.compile``): the one the user wrote."""
    while True:
        inner = next(
            (child for name, child in model.named_children() if _adds_a_level(model, name)), None
        )
        if inner is None:
            return model
        model = inner


def user_named_modules(model: Module) -> Iterator[tuple[str, Module]]:
    """``model.named_modules()`` with the wrappers' levels left out of the names.

    ``DataParallel(net)``'s ``module.linear1`` is ``linear1``, as in ``net``; a
    module reached by several paths is named once, by the first, as in
    ``named_modules``.
    """
    seen: set[int] = set()

    def walk(module: Module, prefix: str) -> Iterator[tuple[str, Module]]:
        if id(module) in seen:
            return
        seen.add(id(module))
        yield prefix, module
        for name, child in module.named_children():
            if _adds_a_level(module, name):
                yield from walk(child, prefix)
            else:
                yield from walk(child, f"{prefix}.{name}" if prefix else name)

    yield from walk(model, "")


def modules_by_name(model: Module) -> dict[str, Module]:
    """Every module of ``model`` by its name in :func:`user_named_modules`, and by its
    name in ``model.named_modules()`` where that differs (both name it)."""
    names = dict(user_named_modules(model))
    for name, module in model.named_modules():
        names.setdefault(name, module)
    return names


def layer_name(model: Optional[Module], layer: Module) -> str:
    """The layer's name in :func:`user_named_modules`, or its class name."""
    if model is not None:
        for name, module in user_named_modules(model):
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
    """The ``nn.Module`` behind ``forward_func`` (a module or its bound method, or the
    module an :class:`~captum_ssa._utils.model_output.ExplainedForward` runs)."""
    if isinstance(forward_func, ExplainedForward):
        return model_of(forward_func.model_forward)
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


def spatial_mean(tensor: Tensor, leading_dims: int = 1, weights: Optional[Tensor] = None) -> Tensor:
    """Mean over every dim after the neuron axis: (..., K, *P) -> (..., K), the
    activity of every neuron of a captured output (SSA's, and the graph page's).

    With ``weights`` ``(N, P)`` (SSA's ``segment.layer_position_weights``, for a
    layer with a mask) the mean over each example's valid positions only: the weighted sum.
    """
    keep = leading_dims + 1
    flat = tensor.reshape(*tensor.shape[:keep], -1)
    if weights is None:
        return flat.mean(-1)
    return (flat * weights[:, None, :].to(flat)).sum(-1)


def call_forward(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    additional_forward_args: Any = None,
) -> Any:
    """Call ``forward_func(*inputs, *additional_forward_args)`` as Captum does."""
    extra = _format_additional_forward_args(additional_forward_args)
    return forward_func(*inputs, *(extra or ()))


class _ModuleClaims:
    """Which thread's captures hold which modules now (see the module docstring).

    A thread may claim again what it holds (a capture inside another, of a subset
    of its modules); a claim waits until none of its modules is held by another
    thread and then takes them all at once, so two claims never hold part of what
    the other waits for. A nested claim that adds modules could: callers claim
    everything a forward pass hooks in the outermost claim.
    """

    def __init__(self) -> None:
        self._released = threading.Condition()
        self._holders: dict[int, tuple[int, int]] = {}  # id(module): (thread, depth)

    @contextmanager
    def claim(self, modules: Sequence[Module]) -> Iterator[None]:
        thread = threading.get_ident()
        # the modules stay alive while claimed (the caller holds them), so ids are unique
        keys = list(dict.fromkeys(id(module) for module in modules))

        def free() -> bool:
            return all(self._holders.get(key, (thread, 0))[0] == thread for key in keys)

        with self._released:
            self._released.wait_for(free)
            for key in keys:
                self._holders[key] = (thread, self._holders.get(key, (thread, 0))[1] + 1)
        try:
            yield
        finally:
            with self._released:
                for key in keys:
                    holder, depth = self._holders.pop(key)
                    if depth > 1:
                        self._holders[key] = (holder, depth - 1)
                self._released.notify_all()


_CLAIMS = _ModuleClaims()


def claimed_modules(modules: Sequence[Module]) -> contextlib.AbstractContextManager[None]:
    """Hold ``modules`` for this thread's captures: another thread's capture of any of
    them waits until the block ends (see the module docstring)."""
    return _CLAIMS.claim(modules)


def replicated_layer_message(layer: Module) -> str:
    """Why a layer that ran as DataParallel copies cannot be captured, and what to do."""
    return (
        f"layer {type(layer).__name__} ran as several copies in one forward pass "
        "(nn.DataParallel's replicas on two or more GPUs, each on a chunk of the "
        "batch): its output is split across devices, not one tensor the attribution "
        "can differentiate with respect to. Explain the wrapped model on one device "
        "instead (pass model.module, which computes the same function, or "
        "nn.DataParallel(model, device_ids=[one device]))."
    )


def other_thread_message(layer: Module) -> str:
    return (
        f"layer {type(layer).__name__} runs in another thread than the one that "
        "calls the model, and torch.func's transforms do not follow a forward pass "
        "into another thread"
    )


def run_and_capture(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    layers: Sequence[Module],
    additional_forward_args: Any = None,
    stop_after_last: bool = False,
    neuron_dim: Optional[int] = None,
    in_caller_thread: bool = False,
    graph_from_first_layer: bool = False,
    _whole_graph: bool = False,
) -> tuple[Any, list[Tensor]]:
    """Run the model once and return its output and each layer's output.

    Every call of a layer during the forward pass counts, in whatever thread the
    model runs (unless ``in_caller_thread``); the layers are claimed for the call
    (:func:`claimed_modules`).

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
        in_caller_thread: raise :class:`LayerInOtherThreadError` when a layer
            runs in another thread than the caller's; for forward passes under
            a ``torch.func`` transform, which would not see them.
        graph_from_first_layer: record the autograd graph only from the first
            of ``layers`` to run: the forward pass below it runs without
            gradients (its graph, which gradients between layer outputs never
            use, would hold memory), and a floating-point output outside
            autograd (also one computed by a frozen model from integer inputs,
            token ids) is captured as a view of a leaf that requires grad, the
            network continuing from it. Where the first layer runs in another
            thread than the caller's and a later one in a thread without
            gradients, the forward pass is run again with the whole graph
            (``_whole_graph``).

    Returns:
        ``(model_output, [output of each layer])``.
    """
    captured: list[Optional[Tensor]] = [None] * len(layers)
    calls = [0] * len(layers)
    replicated: list[Module] = []
    elsewhere: list[Module] = []
    # under no_grad nothing is recorded, from the first layer or otherwise
    graph_from_first_layer = graph_from_first_layer and torch.is_grad_enabled()
    no_grad_below = graph_from_first_layer and not _whole_graph
    ungraphed: list[Module] = []
    caller = threading.get_ident()
    counting = threading.Lock()  # a forward may run layers in several threads at once

    def make_hook(position: int) -> Callable[[Module, Any, Any], Optional[Tensor]]:
        layer = layers[position]

        def hook(module: Module, _args: Any, output: Any) -> Optional[Tensor]:
            if module is not layer:  # a copy sharing the layer's hooks: a replica
                replicated.append(layer)
                return None
            if in_caller_thread and threading.get_ident() != caller:
                elsewhere.append(layer)
                raise LayerInOtherThreadError(other_thread_message(layer))
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"layer {type(module).__name__} returns "
                    f"{type(output).__name__}; only layers that return a single "
                    "tensor can be observed"
                )
            with counting:
                first_to_run = not any(calls)
                calls[position] += 1
                first = calls[position] == 1
                done = all(count > 0 for count in calls)
            if not first:
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
            if no_grad_below:
                if first_to_run and threading.get_ident() == caller:
                    torch.set_grad_enabled(True)  # the caller's no_grad block restores it
                elif not torch.is_grad_enabled():
                    ungraphed.append(layer)
            outside_autograd = not kept.requires_grad and kept.is_floating_point()
            if graph_from_first_layer and outside_autograd:
                # a view, not the leaf itself: walks down the graph stop at its node
                kept = kept.detach().requires_grad_().view_as(kept)
            captured[position] = kept
            passed_on = kept.clone() if axis == 1 else kept.movedim(1, axis).clone()
            if stop_after_last and done:
                raise _StopForward
            return passed_on

        return hook

    model_output = None
    with claimed_modules(layers):
        handles = [
            layer.register_forward_hook(make_hook(position))
            for position, layer in enumerate(layers)
        ]
        try:
            with (
                contextlib.suppress(_StopForward),
                torch.set_grad_enabled(not no_grad_below and torch.is_grad_enabled()),
            ):
                model_output = call_forward(forward_func, inputs, additional_forward_args)
        finally:
            for handle in handles:
                handle.remove()
    if replicated:
        raise RuntimeError(replicated_layer_message(replicated[0]))
    if elsewhere:  # raised in the worker thread, and not passed on by the forward
        raise LayerInOtherThreadError(other_thread_message(elsewhere[0]))
    if ungraphed:
        return run_and_capture(
            forward_func,
            inputs,
            layers,
            additional_forward_args,
            stop_after_last,
            neuron_dim,
            in_caller_thread,
            graph_from_first_layer=True,
            _whole_graph=True,
        )
    for layer, output in zip(layers, captured):
        if output is None:
            raise ValueError(
                f"layer {type(layer).__name__} did not run during the forward "
                f"pass; is it part of the model and used by its forward?{_compiled_hint()}"
            )
    return model_output, [output for output in captured if output is not None]


def _compiled_hint() -> str:
    """Before torch 2.6 a compiled model that ``forward_func`` calls cannot be run
    eagerly (``compiled.eager``), and its compiled code calls no hook: the likely
    cause of a layer that never ran."""
    if hasattr(torch.compiler, "set_stance"):
        return ""
    return (
        " (Compiled code calls no forward hook: for a torch.compile'd model inside "
        "forward_func, pass the original module, or use torch 2.6 or later.)"
    )


def layer_function(
    forward_func: Callable[..., Any],
    layer: Module,
    additional_forward_args: Any = None,
) -> Callable[..., Tensor]:
    """``inputs -> output of layer``, a pure function for ``torch.func``; raises
    :class:`LayerInOtherThreadError` when the forward runs the layer in a worker
    thread, where a transform would not see it."""

    def evaluate(*inputs: Tensor) -> Tensor:
        _, (output,) = run_and_capture(
            forward_func,
            inputs,
            [layer],
            additional_forward_args,
            stop_after_last=True,
            in_caller_thread=True,
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
    Calls from every thread count, and the layers are claimed as by
    :func:`run_and_capture`. Hooks are removed whatever happens.
    """
    calls = LayerCalls()

    def make_hook(position: int) -> Callable[[Module, tuple[Any, ...]], Any]:
        def hook(module: Module, args: tuple[Any, ...]) -> Any:
            if module is not layers[position] or position in calls.order:
                return None  # a replica or a reused module: run_and_capture reports it
            calls.order.append(position)
            if keep_input[position] and args and isinstance(args[0], Tensor):
                kept = args[0].clone()
                calls.inputs[position] = kept
                return (kept, *args[1:])
            return None

        return hook

    with claimed_modules(layers):
        handles = [
            layer.register_forward_pre_hook(make_hook(position))
            for position, layer in enumerate(layers)
        ]
        try:
            yield calls
        finally:
            for handle in handles:
                handle.remove()
