"""Where SSA's graphs start: the starting neurons of the top layer.

Captum's ``target`` (one class, or one class per example), a ``top_neurons``
set, each example's label over a stream (``target="labels"``), or the classes
of ``class_graphs``: a :class:`StartRequest` holds what the call asked for,
and on the first forward pass, once the top layer's output is known, turns
it into one :class:`Start` per graph. Also the arguments of ``class_graphs``
and each class's examples of an in-memory batch.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_ssa._utils.model_output import output_tensor

# Captum's target: one class for every example, or one class per example.
Target = Union[int, tuple[int, ...], list[int], Tensor, np.ndarray]
# A set of starting neurons of the top layer.
NeuronSet = Union[int, Sequence[int], set[int], Tensor, np.ndarray]


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
    """A ``target`` picks outputs of the model: the top layer must be its output (the
    tensor the constructor's ``output=`` selects)."""
    shape = tuple(output_tensor(model_output, "target (which picks outputs of the model)").shape)
    if shape != top_shape:
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


@dataclass
class Start:
    """Where one graph starts: a fixed set of top neurons, or (``neurons=None``) each
    example's label; ``label`` restricts it to the examples of one class."""

    neurons: Optional[Tensor]
    label: Optional[int] = None
    target: Optional[Union[int, list[int]]] = None
    # a class without examples is an error when required, else it has no graph
    required: bool = True


@dataclass(frozen=True)
class StartRequest:
    """What a call asked for: ``target`` or ``top_neurons`` (``attribute``), or one
    graph per class of ``classes``, or of every class when ``every_class``
    (``class_graphs`` over a stream)."""

    target: Optional[Union[Target, str]] = None
    top_neurons: Optional[NeuronSet] = None
    classes: Optional[list[int]] = None
    every_class: bool = False

    def check(self, stream: bool) -> None:
        """The checks that need no forward pass."""
        if isinstance(self.target, str) and (self.target != "labels" or not stream):
            raise ValueError(
                "target='labels' takes each example's target from the labels of a stream "
                "of (inputs, labels) batches such as a DataLoader; for one batch pass the "
                f"targets themselves (one int per example); got target={self.target!r}"
            )

    def starts(
        self,
        top_output: Tensor,
        top_shape: tuple[int, ...],
        axis: int,
        model_output: Any,
        top_name: str,
        stream: bool,
    ) -> tuple[list[Start], Optional[Tensor]]:
        """Where each graph starts, and the per-example targets of a single batch (or
        None), from the first forward pass: ``top_output`` has the top layer's
        neurons along dim 1, ``top_shape`` is its own output shape, whose neuron
        axis is ``axis``."""
        if self.classes is not None or self.every_class:
            check_target_on_output(model_output, top_shape, top_name)
            wanted = range(top_output.shape[1]) if self.every_class else self.classes or []
            required = not self.every_class
            return [Start(torch.tensor([c]), c, c, required=required) for c in wanted], None
        if isinstance(self.target, str):  # "labels", see check
            check_target_on_output(model_output, top_shape, top_name)
            return [Start(None)], None
        neurons, per_example = starting_neurons(
            self.target, self.top_neurons, top_output, top_shape, axis, model_output, top_name
        )
        if per_example is None:
            target = None if self.target is None else int(neurons[0])
            return [Start(neurons, target=target)], None
        if stream:
            raise ValueError(
                "a target with one class per example cannot follow the batches of a "
                "stream; give each batch as an (inputs, targets) pair and pass "
                "target='labels'"
            )
        return [Start(None)], per_example


# ---------------------------------------------------------------- class_graphs


def check_class_arguments(
    attribute_kwargs: dict[str, Any], classes: Optional[Sequence[int]]
) -> Optional[list[int]]:
    """The classes asked for (None: every class present), after checking that the
    other arguments leave the starting neurons to ``class_graphs``."""
    for reserved in ("target", "top_neurons"):
        if reserved in attribute_kwargs:
            raise TypeError(
                f"class_graphs sets {reserved} itself (each class is its graph's "
                "target); call attribute for other starting neurons"
            )
    wanted = None if classes is None else list(classes)
    for label in wanted or []:
        if not is_integer(label):
            raise TypeError(f"classes must hold ints, got {label!r}")
    return None if wanted is None else [int(label) for label in wanted]


def check_stream_labels(labels: Any) -> None:
    """A stream's batches carry the labels: separate ones are an error."""
    if labels is not None:
        raise ValueError(
            "over a stream of batches, class_graphs takes the labels from the "
            "(inputs, labels) batches; pass labels=None"
        )


def class_subsets(
    formatted: tuple[Tensor, ...],
    labels: Any,
    wanted: Optional[list[int]],
    mask: Optional[Tensor] = None,
) -> Iterator[tuple[int, tuple[Tensor, ...], Optional[Tensor]]]:
    """Each wanted class (default: every class present, sorted) with its examples
    of ``formatted`` and their rows of ``mask``, one class at a time, so that only
    one class's copy of the inputs exists at once."""
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.is_floating_point() or len(labels) != formatted[0].shape[0]:
        raise ValueError(
            f"labels must hold one integer class per example ({formatted[0].shape[0]}), "
            f"got {len(labels)} values of dtype {labels.dtype}"
        )
    labels = labels.cpu().long()
    if wanted is None:
        wanted = sorted(labels.unique().tolist())
    for label in wanted:
        members = (labels == int(label)).nonzero().flatten()
        if len(members) == 0:
            raise ValueError(f"class {label} has no examples among the labels")
        subset = tuple(t.detach()[members.to(t.device)] for t in formatted)
        yield int(label), subset, None if mask is None else mask[members.to(mask.device)]
