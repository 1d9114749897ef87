"""SSA over a dataset: the passes over the data, Steps I-II per batch, III-IV after.

:func:`build_graphs` builds one or several graphs at once (``class_graphs``
over a stream builds every class's graph in the same passes, each class on
its own examples); each graph's state is a :class:`GraphState`. A tensor is a
stream of one batch. Step II is a running sum per layer pair
(``RunningAggregate``), so memory is flat in the dataset size, and under
``torch.distributed`` each rank streams its shard and the sums are
all-reduced before Step IV, which every rank then takes on the same numbers.

Step IV of a pair decides the upper neurons of the pair below, and needs the
whole dataset. So a graph takes either

- ``"per_pair"``: one pass over the data per layer pair, from the top, with
  relevances only for the upper neurons kept above (the forward pass stops at
  the pair's upper layer). ``L - 1`` forward passes per example for ``L``
  layers, but backward passes only for the kept neurons; or
- ``"single"``: one pass with every pair, relevances for *every* upper neuron
  of the lower pairs, thresholded top-down afterwards.

``Options.pass_structure`` is the rule; a single in-memory batch keeps its
forward pass between pairs (no extra cost).

Every temporary is bounded by the memory budget (``memory_budget.py``): the
upper neurons per relevance call (their Step I rows, the seeds below a
Linear/Conv and batched gradients) and the examples per forward pass (one
upper neuron's gradient on the lower layer, and what is computed from it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from captum_ssa._core.stepwise_sensitivity.network import Capture, Network
from captum_ssa._core.stepwise_sensitivity.options import Options
from captum_ssa._core.stepwise_sensitivity.relevance import LayerPair
from captum_ssa._core.stepwise_sensitivity.segment import VECTORISED_GRADIENT_ELEMENTS
from captum_ssa._core.stepwise_sensitivity.starts import Start, StartRequest
from captum_ssa._core.stepwise_sensitivity.steps import (
    RunningAggregate,
    aggregate_upper_neurons,
    relevance_tensor,
    threshold,
)
from captum_ssa._utils._compat import progress
from captum_ssa._utils.batches import Batch, BatchStream, pieces
from captum_ssa._utils.distributed import all_reduce_sum
from captum_ssa._utils.memory_budget import (
    SavedTensorBytes,
    get_memory_budget,
    rows_within_budget,
)
from captum_ssa._utils.validation import fresh_leaf

# Copies, per upper neuron and example, of Step I's (M, N, K) rows alive at
# once: the rows, Tukey's sorted copy, its fences and its outlier indicator.
RELEVANCE_ROW_COPIES = 4
# Copies of a seed below the upper layer alive at once: the seed, its
# absolute value and the reordered copy a batched product makes (plus the map
# of the upper output it is computed from).
SEED_COPIES = 3
# Copies of the lower output that one upper neuron's relevance holds per
# example: its gradient, the gradient times an activation, its absolute
# value, and the segment's own intermediate gradients.
GRADIENT_COPIES = 4


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


def build_graphs(
    network: Network, data: BatchStream, request: StartRequest, options: Options
) -> list[GraphState]:
    """Read ``data`` in as many passes as ``options`` take and build every graph."""
    first = data.first
    measured = bytes_per_example(network, first)
    if measured is not None and rows_within_budget(measured) < first.size:
        # the whole batch's graph would outgrow the budget: this pass only checks the
        # layers and finds the starting neurons, the batch is then read in pieces
        with torch.no_grad():
            first_capture = network.capture(first.inputs, first.mask)
    else:
        first_capture = network.capture(first.inputs, first.mask)
    rows = examples_within_budget(first_capture.outputs, measured or 0)
    top_shape = network.check_first_pass(first_capture)
    starts, labels = request.starts(
        first_capture.outputs[-1],
        top_shape,
        network.axes[-1],
        first_capture.model_output,
        network.layer_names[-1],
        data.is_stream,
    )
    if labels is not None:
        first = Batch(first.inputs, labels, first.mask)
    states = [GraphState(start) for start in starts]
    structure = options.pass_structure(data.one_shot, len(network.layers))
    # The first batch's forward pass serves the first pass too; a single batch is
    # the same data in every pass, so its forward passes are kept between passes.
    kept: dict[int, Capture] = {}
    if rows >= first.size:
        kept = {id(state): first_capture for state in states if state.start.label is None}
    del first_capture

    top = len(network.layers) - 1
    pair_order = list(range(top, 0, -1))
    schedule = [pair_order] if structure == "single" else [[upper] for upper in pair_order]
    for pass_index, uppers in enumerate(schedule):
        pending = [state for state in states if uppers[0] == top or len(state.upper_neurons)]
        for state in pending:
            for upper in uppers:
                state.aggregates[upper] = RunningAggregate(
                    network.sizes[upper], network.sizes[upper - 1], options.aggregation
                )
        if pending:
            names = network.layer_names
            description = (
                "SSA, every layer pair"
                if len(uppers) > 1
                else f"SSA {names[uppers[0]]} -> {names[uppers[0] - 1]}"
            )
            batches = progress(
                data.read(), desc=description, total=data.length, disable=not options.show_progress
            )
            for position, batch in enumerate(batches):
                if position == 0 and (pass_index == 0 or not data.is_stream):
                    batch = first  # with the per-example targets of a single batch
                for state in pending:
                    for part, unit in enumerate(row_slices(batch, state.start.label, rows)):
                        capture = kept.get(id(state)) if part == 0 and position == 0 else None
                        if capture is None:
                            depth = None if structure == "single" else uppers[0] + 1
                            capture = network.capture(unit.inputs, unit.mask, depth)
                            if not data.is_stream and rows >= first.size:
                                kept[id(state)] = capture
                        if pass_index == 0:
                            state.examples += unit.size
                        accumulate(network, options, state, capture, unit, uppers, structure)
                        del capture
                if data.is_stream and position == 0:
                    kept.clear()  # later batches, and later passes, read new batches
        if pass_index == 0:
            for state in states:
                counted = torch.tensor([float(state.examples)])
                state.examples = int(all_reduce_sum(counted).item())
                if state.examples == 0 and state.start.required:
                    raise ValueError(f"class {state.start.label} has no examples among the labels")
            states = [state for state in states if state.examples > 0]
        for state in states:
            for upper in uppers:
                finish_pair(network, options, state, upper)
    return states


def accumulate(
    network: Network,
    options: Options,
    state: GraphState,
    capture: Capture,
    unit: Batch,
    uppers: list[int],
    structure: str,
) -> None:
    """Steps I and II of the pairs ``uppers`` on one capture, for the upper neurons
    each pair computes, chunked by the memory budget."""
    top = len(network.layers) - 1
    for upper in uppers:
        pair = network.pair(capture, upper)
        datapoints = None
        if upper == top:
            neurons, datapoints = top_rows(network, state.start, unit)
        elif structure == "single":
            neurons = torch.arange(network.sizes[upper])
        else:
            neurons = state.upper_neurons
        chunk = options.upper_neurons_per_chunk or upper_neurons_within_budget(pair)
        for start in range(0, len(neurons), chunk):
            part = neurons[start : start + chunk]
            omega = relevance_tensor(pair, part, options.relevance, options.absolute)
            part_datapoints = None if datapoints is None else datapoints[start : start + chunk]
            state.aggregates[upper].add(part, omega, part_datapoints)
            del omega


def top_rows(network: Network, start: Start, unit: Batch) -> tuple[Tensor, Optional[Tensor]]:
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
    size = network.sizes[-1]
    outside = values[(values < 0) | (values >= size)]
    if len(outside):
        raise ValueError(
            f"target='labels': labels {outside.unique().tolist()} out of range: the top "
            f"layer {network.layer_names[-1]!r} has {size} neurons (0 to {size - 1})"
        )
    active = values.unique()
    return active, active[:, None] == values[None, :]


def finish_pair(network: Network, options: Options, state: GraphState, upper: int) -> None:
    """Steps III-IV of pair ``upper`` once its Step II sums cover all the data."""
    aggregate = state.aggregates.pop(upper, None)
    lower_name = network.layer_names[upper - 1]
    dtype = network.dtypes[upper - 1]
    if aggregate is not None:
        aggregate.all_reduce()
    if upper == len(network.layers) - 1:
        if state.start.neurons is not None:
            state.upper_neurons = state.start.neurons
        else:
            assert aggregate is not None
            state.upper_neurons = (aggregate.counts > 0).nonzero().flatten()
            classes = state.upper_neurons.tolist()
            # every example of one class is that class's graph: stored as an int target
            # stores it, so that the two compare equal
            state.start.target = classes[0] if len(classes) == 1 else classes
        top_relevance = torch.zeros(network.sizes[upper], dtype=network.dtypes[upper])
        top_relevance[state.upper_neurons] = 1.0
        state.neurons, state.relevances = [state.upper_neurons], [top_relevance]
    upper_neurons = state.upper_neurons
    size = network.sizes[upper - 1]
    if aggregate is None or not len(upper_neurons):
        matrix = torch.zeros(0, size, dtype=dtype)
    else:
        matrix = aggregate.matrix(upper_neurons, dtype)
    if options.absolute_of_mean:
        matrix = matrix.abs()
    if len(upper_neurons):
        # the relevance-weighted rule (an extension) weighs each row by the Step III
        # relevance found for its upper neuron one pair above (1 for the starting neurons)
        weights = (
            state.relevances[0][upper_neurons]
            if options.upper_aggregation == "relevance_weighted"
            else None
        )
        vector = aggregate_upper_neurons(matrix, weights)
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


def upper_neurons_within_budget(pair: LayerPair) -> int:
    """How many upper neurons' Step I temporaries fit in the memory budget together."""
    lower, upper = pair.lower_output, pair.upper_output
    item = lower.element_size()
    per_neuron = lower.shape[0] * lower.shape[1] * item * RELEVANCE_ROW_COPIES
    if pair.upper_input is not None:  # a seed below the layer, the same for every example
        per_neuron += (upper[0].numel() + SEED_COPIES * pair.upper_input[0].numel()) * item
    if lower.numel() <= VECTORISED_GRADIENT_ELEMENTS:  # several per backward pass
        per_neuron += (upper.numel() + 2 * lower.numel()) * item
    return rows_within_budget(per_neuron, get_memory_budget() // 2)


def examples_within_budget(outputs: Sequence[Tensor], measured: int = 0) -> int:
    """How many examples one forward pass may hold so that a single upper neuron's
    gradient temporaries, on the widest listed lower layer, fit in the budget, and
    so that the ``measured`` bytes per example (:func:`bytes_per_example`) do."""
    per_example = max(
        [measured]
        + [output[0].numel() * output.element_size() * GRADIENT_COPIES for output in outputs[:-1]]
    )
    # the piece's graph lives while the upper neurons' chunks are computed on it: each
    # gets half of the budget (upper_neurons_within_budget takes the other half)
    return rows_within_budget(per_example, get_memory_budget() // 2)


def bytes_per_example(network: Network, batch: Batch) -> Optional[int]:
    """What one example of a forward pass costs, measured on forward passes of two
    and of three examples of ``batch``: the bytes the recorded graph saves for
    backward and, for a single upper neuron's gradients, ``GRADIENT_COPIES`` times
    the widest tensor it saves; what lies between the layers (hidden layers much
    wider than the listed ones) included. None for a batch of fewer than three,
    or when an additional forward argument is shaped like the batch (a piece of
    the inputs would not match it)."""
    # two and three, not one and two: a batch norm in training mode refuses one example
    if batch.size < 3 or _batch_shaped(network.additional_forward_args, batch.size):
        return None
    saved = []
    for count in (2, 3):
        piece = next(pieces(batch, count))
        with SavedTensorBytes() as counter:
            capture = network.capture(tuple(fresh_leaf(t) for t in piece.inputs), piece.mask)
        saved.append(counter)
        del capture
    # the difference leaves out what does not grow with the examples (the weights)
    graph = max(0, saved[1].total - saved[0].total)
    widest = max(0, saved[1].widest - saved[0].widest)
    return graph + GRADIENT_COPIES * widest


def _batch_shaped(arguments: Any, size: int) -> bool:
    """Whether any tensor among ``arguments`` has ``size`` rows."""
    if arguments is None:
        return False
    if not isinstance(arguments, (tuple, list)):
        arguments = (arguments,)
    return any(isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == size for a in arguments)


def row_slices(batch: Batch, label: Optional[int], rows: int) -> Iterator[Batch]:
    """The examples of ``batch`` (of class ``label`` only, if given), ``rows`` at a time,
    as fresh leaf inputs (the floating-point ones require grad), with their mask."""
    inputs, labels, mask = batch.inputs, batch.labels, batch.mask
    if label is not None:
        if labels is None:
            raise ValueError(
                "class_graphs over a stream needs (inputs, labels) batches; a batch came "
                "without labels"
            )
        members = (labels == label).nonzero().flatten()
        if not len(members):
            return
        if len(members) < len(labels):
            inputs = tuple(fresh_leaf(t[members.to(t.device)]) for t in inputs)
            labels = labels[members]
            mask = None if mask is None else mask[members.to(mask.device)]
    whole = Batch(inputs, labels, mask)
    if rows >= whole.size:
        yield whole
        return
    for piece in pieces(whole, rows):
        yield Batch(tuple(fresh_leaf(t) for t in piece.inputs), piece.labels, piece.mask)
