"""LayeredInfluence's reference set, read from a stream of batches with bounded memory.

The influence compares a query with every reference point in one layer, so the
chosen layer's activations on the whole reference set are kept. Nothing else is:

- choosing the layer (:meth:`ReferenceReader.probe`) reads, per candidate, only
  its probe features (a unit's value, a conv channel's spatial mean) for the
  ``"linear"`` criterion, or for ``"dispersion"`` its activations on a fixed
  subsample of at most ``sample_points`` reference points (:class:`_Subsample`);
- :meth:`ReferenceReader.keep` then reads the chosen layer alone, with the model's
  labels (a :class:`LayerReference`), into one buffer allocated for the number of
  points the first pass counted (or a tensor's length). When no count is known (a
  given layer and a stream), each batch's layer output is kept as it is, as one
  block among many: never concatenated into a second copy. Rows are centred in
  place.

Under ``torch.distributed`` every rank reads its own shard and ends with the union
of all shards in rank order (:func:`~captum_ssa._utils.distributed.union_over_ranks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.layered_influence.labels import model_labels
from captum_ssa._utils.batches import is_batch_stream, pieces, stream
from captum_ssa._utils.distributed import (
    all_reduce_sum,
    is_distributed,
    rank_and_world_size,
    rows_on_every_rank,
    same_on_every_rank,
    union_over_ranks,
)
from captum_ssa._utils.hooks import observe_layer_calls, run_and_capture
from captum_ssa._utils.memory_budget import rows_within_budget

# frac(i * golden ratio) spreads the indices i evenly over [0, 1) (a Weyl sequence):
# the points with the smallest keys are a sample spread over the whole stream, the
# same whatever the batching, and covering every class even of sorted data
_GOLDEN_RATIO_FRACTION = 0.6180339887498949

# The dispersion criterion's subsample: the influence of S points against S points
# costs S^2 x units per candidate, so S stays small (and within the memory budget).
DEFAULT_DISPERSION_POINTS = 2048


@dataclass
class LayerReference:
    """One layer's activations on the reference set, centred, as row blocks, and the
    model's labels of the reference points."""

    blocks: list[Tensor]  # (rows, units) each: h(y) - mean, in stream order
    mean: Tensor  # (units,)
    shape: tuple[int, ...]  # the layer output's shape per example
    labels: Tensor  # (M,) the model's label of every reference point, in stream order

    @property
    def nbytes(self) -> int:
        """Bytes of the kept activations."""
        return sum(block.numel() * block.element_size() for block in self.blocks)


@dataclass
class Probe:
    """What choosing the layer needs, from one pass over the reference set."""

    labels: Tensor  # (M,) the model's labels of every reference point
    call_order: list[int]  # the candidates in the order they run, lowest first
    rows_per_rank: list[int]  # reference points on each rank
    features: list[Tensor]  # per candidate (M, neurons), for "linear"
    samples: list[Tensor]  # per candidate (S, units), for "dispersion"
    sample_labels: Optional[Tensor]  # (S,), for "dispersion"


class ReferenceReader:
    """Reads a reference set through the model, a piece of at most ``batch_size``
    points at a time, checking that every point has one input and layer shape."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        candidates: Sequence[Module],
        names: Sequence[str],
        additional_forward_args: Any,
        batch_size: Optional[int],
        show_progress: bool,
    ) -> None:
        self._forward_func = forward_func
        self._candidates = list(candidates)
        self._names = list(names)
        self._additional_forward_args = additional_forward_args
        self._batch_size = batch_size
        self._show_progress = show_progress

    def probe(self, reference: Any, criterion: str, sample_points: Optional[int]) -> Probe:
        """Every candidate's probe features ("linear") or subsample ("dispersion")."""
        features: list[list[Tensor]] = [[] for _ in self._candidates]
        subsample = _Subsample(sample_points, len(self._candidates))
        labels: list[Tensor] = []
        call_order: list[int] = []
        rows = 0
        for piece_labels, outputs, order in self._read(reference, self._candidates):
            call_order = call_order or order
            if criterion == "linear":
                for kept, output in zip(features, outputs):
                    kept.append(neuron_activities(output))
            else:
                subsample.add(rows, [o.reshape(len(o), -1) for o in outputs], piece_labels)
            labels.append(piece_labels)
            rows += len(piece_labels)
        widths = [int(parts[0][0].numel()) if parts else 0 for parts in features]
        _check_rows(rows, widths)
        samples, sample_labels = subsample.result() if criterion != "linear" else ([], None)
        return Probe(
            labels=union_over_ranks(torch.cat(labels)),
            call_order=call_order,
            rows_per_rank=rows_on_every_rank(rows),
            features=[union_over_ranks(torch.cat(parts)) for parts in features if parts],
            samples=samples,
            sample_labels=sample_labels,
        )

    def keep(
        self, reference: Any, position: int, rows_per_rank: Optional[list[int]]
    ) -> LayerReference:
        """The layer's centred activations on the reference set, with the labels.

        With ``rows_per_rank`` (or a tensor reference, whose length is known) the
        rows go into one preallocated buffer; otherwise each piece's layer output
        is kept as a block of its own.
        """
        if rows_per_rank is None and not is_batch_stream(reference):
            first = reference if isinstance(reference, Tensor) else reference[0]
            rows_per_rank = rows_on_every_rank(len(first))
        rank, _ = rank_and_world_size()
        start = 0 if rows_per_rank is None else sum(rows_per_rank[:rank])
        buffer: Optional[Tensor] = None
        blocks: list[Tensor] = []
        labels: list[Tensor] = []
        total: Optional[Tensor] = None  # the running sum of the rows, for the mean
        shape: tuple[int, ...] = ()
        for piece_labels, (output,), _ in self._read(reference, [self._candidates[position]]):
            shape = tuple(output.shape[1:])
            rows = output.reshape(len(output), -1)
            if total is None:
                total = rows.new_zeros(rows.shape[1], dtype=torch.float64)
            total += rows.sum(0, dtype=torch.float64)
            whole = rows_per_rank is not None and len(rows) == rows_per_rank[rank]
            if rows_per_rank is None or (whole and not is_distributed()):
                # a stream's pieces, or one piece with every point: kept as they are
                blocks.append(_owned(rows))
            else:
                if buffer is None:
                    # zeros where other ranks' rows go: the all-reduce below adds them
                    allocate = rows.new_zeros if is_distributed() else rows.new_empty
                    buffer = allocate(sum(rows_per_rank), rows.shape[1])
                stop = start + len(rows)
                if stop > sum(rows_per_rank[: rank + 1]):
                    raise _changed_between_passes()
                buffer[start:stop] = rows
                start = stop
            labels.append(piece_labels)
        local_rows = sum(len(part) for part in labels)
        _check_rows(local_rows, [0 if total is None else len(total)])
        assert total is not None
        if rows_per_rank is not None and local_rows != rows_per_rank[rank]:
            raise _changed_between_passes()
        if buffer is not None:
            blocks = [all_reduce_sum(buffer)]
        elif is_distributed():
            blocks = [_union_of_blocks(blocks)]
        count = sum(rows_on_every_rank(local_rows))
        mean = (all_reduce_sum(total) / count).to(blocks[0].dtype)
        for block in blocks:
            block.sub_(mean)
        return LayerReference(blocks, mean, shape, union_over_ranks(torch.cat(labels)))

    def _read(
        self, reference: Any, layers: Sequence[Module]
    ) -> Iterator[tuple[Tensor, list[Tensor], list[int]]]:
        """Per piece: the model's labels, the layers' outputs and the call order."""
        first_shapes: Optional[list[tuple[int, ...]]] = None
        layer_shapes: dict[int, tuple[int, ...]] = {}
        batches = stream(reference, "reference", self._show_progress, "Reference batches")
        for index, batch in enumerate(batches):
            batch_shapes = [tuple(t.shape[1:]) for t in batch.inputs]
            first_shapes = first_shapes or batch_shapes
            if batch_shapes != first_shapes:
                raise ValueError(
                    f"reference batch {index} holds inputs shaped {_shown(batch_shapes)} "
                    f"per example, batch 0 {_shown(first_shapes)}: every reference "
                    "point is compared with every other in the layer, so give "
                    "reference inputs of one shape"
                )
            for piece in pieces(batch, self._batch_size):
                with observe_layer_calls(layers, [False] * len(layers)) as calls:
                    output, outputs = run_and_capture(
                        self._forward_func, piece.inputs, layers, self._additional_forward_args
                    )
                for layer, layer_output in zip(layers, outputs):
                    shape = tuple(layer_output.shape[1:])
                    seen = layer_shapes.setdefault(id(layer), shape)
                    if seen != shape:
                        raise ValueError(
                            f"layer {self._names[self._candidates.index(layer)]} outputs "
                            f"{shape} per example in one reference batch and {seen} in "
                            "another; give reference inputs of one shape"
                        )
                yield model_labels(output), [o.detach() for o in outputs], calls.order


def neuron_activities(layer_output: Tensor) -> Tensor:
    """The linear probe's features, ``(N, neurons)``: a unit's value, or a channel's
    spatial mean (dim 1 is the neuron axis)."""
    if layer_output.dim() == 1:
        return layer_output[:, None]
    return layer_output.reshape(*layer_output.shape[:2], -1).mean(2)


class _Subsample:
    """The ``capacity`` reference points with the smallest keys frac(i * golden
    ratio) of their index i in the stream, with every candidate's activations.

    Under ``torch.distributed`` rank r's k-th point gets index ``k * world + r``,
    its index in the dataset when a ``DistributedSampler`` deals the points out
    without shuffling, and the ranks' samples are merged by key.
    """

    def __init__(self, capacity: Optional[int], layers: int) -> None:
        self._capacity = capacity
        self._indices = torch.zeros(0, dtype=torch.float64)
        self._rows: list[Optional[Tensor]] = [None] * layers
        self._labels: Optional[Tensor] = None

    def add(self, first: int, outputs: list[Tensor], labels: Tensor) -> None:
        if self._capacity is None:
            # every candidate's rows of the subsample together within the memory budget
            row_bytes = sum(o[0].numel() * o.element_size() for o in outputs)
            self._capacity = min(DEFAULT_DISPERSION_POINTS, rows_within_budget(row_bytes))
        rank, world = rank_and_world_size()
        new = torch.arange(first, first + len(labels), dtype=torch.float64) * world + rank
        indices = torch.cat([self._indices, new])
        keep = _smallest_keys(indices, self._capacity)
        self._indices = indices[keep]
        self._rows = [
            (o if kept is None else torch.cat([kept, o]))[keep.to(o.device)]
            for kept, o in zip(self._rows, outputs)
        ]
        labels = labels.cpu()
        self._labels = (labels if self._labels is None else torch.cat([self._labels, labels]))[keep]

    def result(self) -> tuple[list[Tensor], Optional[Tensor]]:
        """The rows per candidate and the labels, over all ranks, in index order."""
        assert self._labels is not None and self._capacity is not None
        indices = union_over_ranks(self._indices)
        keep = _smallest_keys(indices, self._capacity)
        keep = keep[indices[keep].argsort()]  # stream order, as a full reference would be
        rows = [union_over_ranks(r)[keep.to(r.device)] for r in self._rows if r is not None]
        return rows, union_over_ranks(self._labels)[keep]


def _smallest_keys(indices: Tensor, capacity: int) -> Tensor:
    keys = (indices * _GOLDEN_RATIO_FRACTION) % 1.0
    return keys.argsort(stable=True)[:capacity]


def _check_rows(rows: int, widths: list[int]) -> None:
    """A clear error, raised on every rank together, for an empty reference set
    or ranks whose layers disagree."""
    if not same_on_every_rank([int(rows > 0), *widths]):
        raise ValueError(
            "the ranks' reference shards disagree: each rank needs reference points, "
            "of the same shape on every rank"
        )
    if rows == 0:
        raise ValueError("the reference data is empty: fit needs reference points")


def _changed_between_passes() -> ValueError:
    return ValueError(
        "the reference data gave a different number of points in fit's second pass "
        "than in its first: fit reads the reference twice to choose the layer, so it "
        "must give the same points each time (pass layer= to read it once)"
    )


def _owned(rows: Tensor) -> Tensor:
    """``rows``, copied if it is a view into a larger tensor (a Flatten layer's
    output, say), so that keeping it keeps no more memory than its own."""
    if rows.untyped_storage().nbytes() > rows.numel() * rows.element_size():
        return rows.clone()
    return rows


def _union_of_blocks(blocks: list[Tensor]) -> Tensor:
    """The union over the ranks of this rank's blocks, copied one at a time into
    its slice (the peak is the union plus this rank's own rows)."""
    rank, _ = rank_and_world_size()
    counts = rows_on_every_rank(sum(len(b) for b in blocks))
    union = blocks[0].new_zeros(sum(counts), blocks[0].shape[1])
    start = sum(counts[:rank])
    while blocks:
        block = blocks.pop(0)
        union[start : start + len(block)] = block
        start += len(block)
    return all_reduce_sum(union)


def _shown(shapes: list[tuple[int, ...]]) -> str:
    """Per-example input shapes as a user wrote them: one, or a tuple of them."""
    return str(shapes[0]) if len(shapes) == 1 else str(tuple(shapes))
