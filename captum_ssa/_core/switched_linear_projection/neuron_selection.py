"""One neuron of a layer: choosing it, and reading it from the network.

:class:`~captum_ssa.SwitchedLinearProjection` projects one neuron per example,
chosen in the layer's output (or, with ``attribute_to_neuron_input``, its
input) either with Captum's ``target`` (as it chooses a model output) or with
``neuron_selector`` (as Captum's neuron methods do).
:func:`select_neuron` turns either into one activity per example, with errors
that name the argument and say what would select one neuron of that layer;
:func:`activity_and_weights` and :func:`activity_at` run the network to get
that activity, and its gradient with respect to the inputs (the switched
weights), or, with the class's ``embedding_layer``, with respect to the
embeddings of token ids (:mod:`captum_ssa._utils.embedding_layer`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.switched_linear_projection.projection import start_points
from captum_ssa._utils._compat import (
    BaselineType,
    TargetType,
    TensorOrTupleOfTensorsGeneric,
    _select_targets,
    _verify_select_neuron,
)
from captum_ssa._utils.embedding_layer import AttributedInputs, attributed_inputs
from captum_ssa._utils.hooks import run_and_capture
from captum_ssa._utils.linearity import warn_if_not_piecewise_linear
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.validation import NeuronSelector, check_neuron_selector

if TYPE_CHECKING:
    from captum_ssa._core.switched_linear_projection.explainer import SwitchedLinearProjection


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


def _out_of_range(target: list[Any], example: int, neuron_shape: tuple[int, ...]) -> IndexError:
    """The error for an entry of a per-example list that indexes outside the values."""
    return IndexError(
        f"example {example}'s index {target[example]} is out of range for one "
        f"example's values shaped {neuron_shape}"
    )


def _flat_indices(target: list[Any], neuron_shape: tuple[int, ...]) -> Optional[Tensor]:
    """A list of per-example index tuples as one flat index per example into the
    example's flattened values (N,), or None where an entry is not a tuple of one
    int per dimension (Captum's own selection then decides what it selects)."""
    if not all(
        isinstance(entry, tuple)
        and len(entry) == len(neuron_shape)
        and all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in entry)
        for entry in target
    ):
        return None
    try:
        indices = torch.tensor(target, dtype=torch.long).reshape(len(target), len(neuron_shape))
    except (OverflowError, RuntimeError, ValueError):  # an index beyond int64
        beyond = [any(abs(int(i)) >= 2**63 for i in entry) for entry in target]
        if any(beyond):
            raise _out_of_range(target, beyond.index(True), neuron_shape) from None
        return None
    sizes = torch.tensor(neuron_shape, dtype=torch.long)
    outside = ((indices < -sizes) | (indices >= sizes)).any(1)
    if outside.any():
        raise _out_of_range(target, int(outside.nonzero()[0]), neuron_shape)
    strides = torch.ones(len(neuron_shape), dtype=torch.long)
    for dim in range(len(neuron_shape) - 2, -1, -1):
        strides[dim] = strides[dim + 1] * neuron_shape[dim + 1]
    # negative indices count from the end, as Python's indexing (and Captum's) reads them
    return (indices.remainder(sizes) * strides).sum(1)


def _select_targets_by_gather(layer_output: Tensor, target: TargetType) -> Tensor:
    """Captum's ``_select_targets``, with a list of per-example index tuples read
    by one gather.

    Captum stacks one indexing per example for that list, and the backward of
    each indexing writes a gradient the size of the whole layer output: N
    examples cost N times the output. One gather of the flattened values costs
    one output's size whatever N, with the same values.
    """
    if isinstance(target, list):
        batch_size = layer_output.shape[0]
        if len(target) != batch_size:
            raise IndexError(f"it lists {len(target)} entries for {batch_size} examples")
        flat = _flat_indices(target, tuple(layer_output.shape[1:]))
        if flat is not None:
            values = layer_output.reshape(batch_size, -1)
            return values.gather(1, flat.to(layer_output.device)[:, None]).squeeze(1)
    return _select_targets(layer_output, target)


def _select_target(layer_output: Tensor, target: TargetType) -> Tensor:
    """Captum's ``target`` applied to the layer output, with errors naming ``target``."""
    shape = tuple(layer_output.shape)
    expected = _what_selects_one_neuron(shape[1:])
    if isinstance(target, bool):
        raise ValueError(f"target must be an index, not a bool; expected {expected}")
    if isinstance(target, numbers.Integral):
        target = int(target)  # NumPy integers, which Captum's helper does not accept
    try:
        selected = _select_targets_by_gather(layer_output, target)
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


def _read_as_captum_positional(
    target: TargetType, neuron_selector: Optional[NeuronSelector]
) -> tuple[TargetType, Optional[NeuronSelector]]:
    """``(target, neuron_selector)``, with a selector passed second positionally
    moved to ``neuron_selector``.

    Captum's neuron methods take ``neuron_selector`` second, where ours take
    ``target``. An int or a tuple of ints selects the same unit either way, so
    only the forms that ``target`` cannot take, a callable and a tuple holding
    a slice, are moved.
    """
    selector_only = callable(target) or (
        isinstance(target, tuple) and any(isinstance(i, slice) for i in target)
    )
    if selector_only and neuron_selector is None:
        return None, target
    return target, neuron_selector


def _per_example(layer_output: Tensor, selector: Callable[[Tensor], Tensor]) -> Tensor:
    """A callable selector that reduces the batch to one element (Captum's
    ``lambda out: torch.sum(out)``) applied to each example on its own, (N,).

    The examples come from one ``split``, whose backward joins their gradients
    once; a slice per example would write a gradient the size of the whole
    layer output for each example.
    """
    values = []
    for example in layer_output.split(1):
        value = selector(example)
        if value.numel() != 1:
            raise ValueError(
                "neuron_selector returns one element for the whole batch but "
                f"{tuple(value.shape)} for a single example; it must return one value "
                "per example, or one element for any batch"
            )
        values.append(value.reshape(()))
    return torch.stack(values)


def select_neuron(
    layer_output: Tensor, target: TargetType, neuron_selector: Optional[NeuronSelector]
) -> Tensor:
    """The selected neuron's activity, one value per example (N,)."""
    target, neuron_selector = _read_as_captum_positional(target, neuron_selector)
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
    if callable(neuron_selector) and activity.numel() == 1 and activity.shape != (batch_size,):
        # NeuronGradient differentiates the one element, which for a sum over the
        # examples (the case where its result is per example) is the sum of the
        # per-example values: the same weights, and each example's own activity
        activity = _per_example(layer_output, neuron_selector)
    if activity.shape != (batch_size,):
        raise ValueError(
            "neuron_selector must pick one value per example, a tensor "
            f"shaped ({batch_size},); got {tuple(activity.shape)}"
        )
    return activity


@contextmanager
def _first_input_of(layer: Module) -> Iterator[list[Tensor]]:
    """Record a clone of the first positional input of each call of ``layer``.

    A clone, so that the layer itself (an in-place ReLU) or anything after it
    cannot change what was recorded; the network runs on the original.
    """
    recorded: list[Tensor] = []

    def hook(module: Module, args: tuple[Any, ...]) -> None:
        if not args or not isinstance(args[0], Tensor):
            raise TypeError(
                f"attribute_to_neuron_input needs layer {type(module).__name__} to take a "
                "tensor as its first positional input"
            )
        recorded.append(args[0].clone())

    handle = layer.register_forward_pre_hook(hook)
    try:
        yield recorded
    finally:
        handle.remove()


def _layer_values(
    forward_func: Callable[..., Any],
    layer: Module,
    inputs: tuple[Tensor, ...],
    additional_forward_args: Any,
    attribute_to_neuron_input: bool,
) -> Tensor:
    """The layer's output, or with ``attribute_to_neuron_input`` its input, for ``inputs``."""
    if not attribute_to_neuron_input:
        return run_and_capture(forward_func, inputs, [layer], additional_forward_args)[1][0]
    with _first_input_of(layer) as recorded:
        # also checks that the layer runs, and runs once
        run_and_capture(forward_func, inputs, [layer], additional_forward_args)
    return recorded[0]


def _holding_the_model(attribution: SwitchedLinearProjection) -> AbstractContextManager[Any]:
    """:func:`untouched_model` where reading the attributed points runs the model (the
    embeddings of token ids), and nothing where they are the inputs themselves."""
    if attribution.embedding_layer is None:
        return nullcontext()
    return untouched_model(attribution._forward)


def attributed_points(
    attribution: SwitchedLinearProjection, inputs: Any, additional_forward_args: Any
) -> AttributedInputs:
    """What ``attribution`` differentiates with respect to for ``inputs``: the inputs,
    or the output of its ``embedding_layer`` for token ids."""
    with _holding_the_model(attribution):
        return attributed_inputs(
            attribution._forward,
            attribution.embedding_layer,
            inputs,
            additional_forward_args,
        )


def baseline_points(
    attribution: SwitchedLinearProjection,
    attributed: AttributedInputs,
    baselines: BaselineType,
    additional_forward_args: Any,
) -> tuple[Tensor, ...]:
    """Captum-style ``baselines``, given in the inputs' space as Captum's layer methods
    take them, as points of the attributed space (detached)."""
    points = start_points(baselines, attributed.given)
    with _holding_the_model(attribution):
        return attributed.points_for(points, additional_forward_args)


def activity_and_weights(
    attribution: SwitchedLinearProjection,
    inputs: TensorOrTupleOfTensorsGeneric,
    target: TargetType,
    additional_forward_args: Any,
    neuron_selector: Optional[NeuronSelector],
    check_linearity: bool,
    attribute_to_neuron_input: bool,
) -> tuple[AttributedInputs, Tensor, tuple[Tensor, ...], bool]:
    """One forward and one backward of ``attribution``'s model to its layer:
    ``(attributed inputs, activity (N,), weights, warned)``, where ``warned`` says
    whether, asked to ``check_linearity``, it warned that the network is not
    piecewise linear. The weights are with respect to ``attributed.leaves``."""
    with untouched_model(attribution._forward):
        attributed = attributed_inputs(
            attribution._forward,
            attribution.embedding_layer,
            inputs,
            additional_forward_args,
        )
        leaves = attributed.leaves
        layer_output = _layer_values(
            attributed.forward_func,
            attribution.layer,
            leaves,
            additional_forward_args,
            attribute_to_neuron_input,
        )
        activity = select_neuron(layer_output, target, neuron_selector)
        warned = check_linearity and warn_if_not_piecewise_linear(
            type(attribution).__name__, activity, leaves
        )
        # Examples do not interact in eval mode, so the gradient of the sum
        # holds every example's own switched weights.
        weights = torch.autograd.grad(
            activity.sum(), leaves, allow_unused=True, materialize_grads=True
        )
    return attributed, activity.detach(), tuple(w.detach() for w in weights), warned


def activity_at(
    attribution: SwitchedLinearProjection,
    forward_func: Callable[..., Any],
    points: tuple[Tensor, ...],
    target: TargetType,
    additional_forward_args: Any,
    neuron_selector: Optional[NeuronSelector],
    attribute_to_neuron_input: bool,
) -> Tensor:
    """The network's actual activity of the selected neuron at ``points`` (N), run
    by ``forward_func`` (the model, or its :class:`EmbeddingForward`)."""
    with untouched_model(attribution._forward), torch.no_grad():
        layer_output = _layer_values(
            forward_func,
            attribution.layer,
            points,
            additional_forward_args,
            attribute_to_neuron_input,
        )
        return select_neuron(layer_output, target, neuron_selector)
