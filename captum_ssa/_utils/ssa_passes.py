"""The passes of SSA over the data, and Steps III-IV after each (see ``ssa_streaming``).

:func:`build_graphs` builds one or several graphs at once (``class_graphs``
over a stream builds every class's graph in the same passes, each class on
its own examples); each graph's state is a :class:`GraphState`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from captum_ssa._utils._compat import progress
from captum_ssa._utils.batches import Batch, is_batch_stream, iterate_batches
from captum_ssa._utils.distributed import all_reduce_sum
from captum_ssa._utils.ssa_steps import RunningAggregate, aggregate_upper_neurons, threshold
from captum_ssa._utils.ssa_streaming import (
    Capture,
    Setting,
    choose_passes,
    examples_within_budget,
    row_slices,
)


@dataclass
class Start:
    """Where one graph starts: a fixed set of top neurons, or (``neurons=None``) each
    example's label; ``label`` restricts it to the examples of one class."""

    neurons: Optional[Tensor]
    label: Optional[int] = None
    target: Optional[Union[int, list[int]]] = None
    # a class without examples is an error when required, else it has no graph
    required: bool = True


@dataclass
class Thresholds:
    """Step IV's options, and whether the absolute value follows Step II's mean."""

    mode: str
    percentile: float
    branching: Optional[int]
    max_neurons: Optional[int]
    absolute_of_mean: bool


@dataclass(eq=False)
class GraphState:
    """One graph under construction, from the top layer down."""

    start: Start
    aggregates: dict[int, RunningAggregate] = field(default_factory=dict)
    upper_neurons: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    neurons: list[Tensor] = field(default_factory=list)
    relevances: list[Tensor] = field(default_factory=list)
    matrices: list[Tensor] = field(default_factory=list)
    edges: list[Tensor] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    examples: int = 0


# Called on the first forward pass: checks the layers, fixes the neuron axes and
# returns the starting neurons of each graph, and the labels that per-example
# targets of a single batch stand in for (or None).
Setup = Callable[[Capture, Batch], tuple[list[Start], Optional[Tensor]]]


def build_graphs(
    setting: Setting,
    data: Any,
    setup: Setup,
    thresholds: Thresholds,
    passes: str = "auto",
    show_progress: bool = False,
) -> list[GraphState]:
    """Stream ``data`` (a batch, or an iterable of batches) and build every graph."""
    stream = is_batch_stream(data)
    batches = iterate_batches(data)
    first = next(batches, None)
    if first is None:
        raise ValueError("inputs is an empty stream: it yielded no batch")
    first_capture = setting.capture(first.inputs)
    setting.sizes = [output.shape[1] for output in first_capture.outputs]
    setting.dtypes = [output.dtype for output in first_capture.outputs]
    starts, labels = setup(first_capture, first)
    if labels is not None:
        first = Batch(first.inputs, labels)
    states = [GraphState(start) for start in starts]
    rows = examples_within_budget(first_capture.outputs)
    structure = choose_passes(passes, setting.relevance, data, len(setting.layers))
    one_shot = isinstance(data, Iterator)
    # a single batch, or the batch already read from a one-shot iterator, is the
    # same data in every pass: its forward pass can be used again
    reused: dict[int, Capture] = {}
    if (not stream or one_shot) and rows >= first.size:
        reused = {id(state): first_capture for state in states if state.start.label is None}
    del first_capture

    def read() -> Iterable[Batch]:
        if not stream:
            return [first]
        if one_shot:
            return itertools.chain([first], batches)
        return iterate_batches(data)

    top = len(setting.layers) - 1
    total = len(data) if stream and hasattr(data, "__len__") else None
    pair_order = list(range(top, 0, -1))
    schedule = [pair_order] if structure == "single" else [[upper] for upper in pair_order]
    for pass_index, uppers in enumerate(schedule):
        pending = [state for state in states if uppers[0] == top or len(state.upper_neurons)]
        for state in pending:
            for upper in uppers:
                state.aggregates[upper] = RunningAggregate(
                    setting.sizes[upper], setting.sizes[upper - 1], setting.aggregation
                )
        if pending:
            names = setting.layer_names
            description = (
                "SSA, every layer pair"
                if len(uppers) > 1
                else f"SSA {names[uppers[0]]} -> {names[uppers[0] - 1]}"
            )
            for batch in progress(read(), desc=description, total=total, disable=not show_progress):
                for state in pending:
                    for part, unit in enumerate(row_slices(batch, state.start.label, rows)):
                        capture = reused.get(id(state)) if part == 0 and batch is first else None
                        if capture is None:
                            depth = None if structure == "single" else uppers[0] + 1
                            capture = setting.capture(unit.inputs, depth)
                            if not stream and rows >= first.size:
                                reused[id(state)] = capture
                        if pass_index == 0:
                            state.examples += unit.size
                        _accumulate(setting, state, capture, unit, uppers, structure)
                        del capture
        if pass_index == 0:
            for state in states:
                counted = torch.tensor([float(state.examples)])
                state.examples = int(all_reduce_sum(counted).item())
                if state.examples == 0 and state.start.required:
                    raise ValueError(f"class {state.start.label} has no examples among the labels")
            states = [state for state in states if state.examples > 0]
        for state in states:
            for upper in uppers:
                _finish_pair(setting, state, upper, thresholds)
    return states


def _accumulate(
    setting: Setting,
    state: GraphState,
    capture: Capture,
    unit: Batch,
    uppers: list[int],
    structure: str,
) -> None:
    top = len(setting.layers) - 1
    for upper in uppers:
        pair = setting.pair(capture, upper)
        datapoints = None
        if upper == top:
            neurons, datapoints = _top_rows(setting, state.start, unit)
        elif structure == "single":
            neurons = torch.arange(setting.sizes[upper])
        else:
            neurons = state.upper_neurons
        if len(neurons):
            setting.accumulate(pair, neurons, state.aggregates[upper], datapoints)


def _top_rows(setting: Setting, start: Start, unit: Batch) -> tuple[Tensor, Optional[Tensor]]:
    """The top neurons computed on ``unit`` and, with per-example targets, which of
    its examples count for each."""
    if start.neurons is not None:
        return start.neurons, None
    if unit.labels is None:
        raise ValueError(
            "target='labels' needs every batch to be an (inputs, labels) pair; a batch "
            "came without labels"
        )
    values = unit.labels.reshape(-1).long().cpu()
    size = setting.sizes[-1]
    outside = values[(values < 0) | (values >= size)]
    if len(outside):
        raise ValueError(
            f"target='labels': labels {outside.unique().tolist()} out of range: the top "
            f"layer {setting.layer_names[-1]!r} has {size} neurons (0 to {size - 1})"
        )
    active = values.unique()
    return active, active[:, None] == values[None, :]


def _finish_pair(setting: Setting, state: GraphState, upper: int, options: Thresholds) -> None:
    """Steps III-IV of pair ``upper`` once its Step II sums cover all the data."""
    aggregate = state.aggregates.pop(upper, None)
    lower_name = setting.layer_names[upper - 1]
    dtype = setting.dtypes[upper - 1]
    if upper == len(setting.layers) - 1:
        if aggregate is not None:
            aggregate.all_reduce()
        if state.start.neurons is not None:
            state.upper_neurons = state.start.neurons
        else:
            assert aggregate is not None
            state.upper_neurons = (aggregate.counts > 0).nonzero().flatten()
            state.start.target = state.upper_neurons.tolist()
        top_relevance = torch.zeros(setting.sizes[upper], dtype=setting.dtypes[upper])
        top_relevance[state.upper_neurons] = 1.0
        state.neurons, state.relevances = [state.upper_neurons], [top_relevance]
    elif aggregate is not None:
        aggregate.all_reduce()
    upper_neurons = state.upper_neurons
    size = setting.sizes[upper - 1]
    if aggregate is None or not len(upper_neurons):
        matrix = torch.zeros(0, size, dtype=dtype)
    else:
        matrix = aggregate.matrix(upper_neurons, dtype)
    if options.absolute_of_mean:
        matrix = matrix.abs()
    if len(upper_neurons):
        vector = aggregate_upper_neurons(matrix)
        kept, pair_edges = threshold(
            matrix,
            vector,
            upper_neurons,
            options.mode,
            options.percentile,
            options.branching,
            options.max_neurons,
        )
        if not len(kept):
            state.empty.append(lower_name)
    else:  # nothing is kept above, so nothing here is relevant to it
        kept = upper_neurons
        vector = torch.zeros(size, dtype=dtype)
        pair_edges = torch.zeros(0, 2, dtype=torch.long)
    state.upper_neurons = kept
    state.neurons.insert(0, kept)
    state.relevances.insert(0, vector)
    state.matrices.insert(0, matrix)
    state.edges.insert(0, pair_edges)
