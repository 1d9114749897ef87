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

With masks (token sequences, ``(inputs, labels, mask)`` batches or ``mask=``) a
layer output ``(N, T, ...)`` is read as sequences (:class:`TokenRows`): each
point's real tokens first (pads removed), its length kept beside it, so
batches of different lengths make one reference set; its probe features are
the means over the real tokens, and its mean (for centring) is taken per
position over the points that have it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from captum_ssa._utils.sequence_mask import (
    added_along_positions,
    compacted,
    forward_args_with_mask,
    has_token_axis,
    masked_mean,
    padded_along_positions,
    warn_if_mask_in_forward_args,
)
from captum_ssa._utils.sequence_mask import lengths as real_token_counts

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
    shape: tuple[int, ...]  # the layer output's shape per example (the longest, for sequences)
    labels: Tensor  # (M,) the model's label of every reference point, in stream order
    # token sequences: each point's real tokens (its row holds them first, zeros after)
    lengths: Optional[Tensor] = None

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
    # per candidate, for "dispersion": the samples' lengths and units per position
    # where the candidate's rows are token sequences, else None
    sample_lengths: list[Optional[tuple[Tensor, int]]] = field(default_factory=list)


@dataclass
class TokenRows:
    """A piece's layer output as rows: flattened, or for a token layer under a mask
    its points' real tokens first (zeros after, up to the piece's longest), with
    their ``lengths`` in positions and ``width`` units per position."""

    rows: Tensor  # (n, units)
    lengths: Optional[Tensor] = None  # (n,)
    width: int = 0

    @classmethod
    def of(cls, output: Tensor, mask: Optional[Tensor]) -> TokenRows:
        if mask is None or not has_token_axis(output, mask):
            return cls(output.reshape(len(output), -1))
        point_lengths = real_token_counts(mask).to(output.device)
        longest = int(point_lengths.max())
        rows = compacted(output, mask)[:, :longest]
        return cls(rows.reshape(len(output), -1), point_lengths, int(rows[0, 0].numel()))


class ReferenceReader:
    """Reads a reference set through the model, a piece of at most ``batch_size``
    points at a time, checking that every point has one input and layer shape
    (one per token, for token sequences with masks). ``mask`` is the mask of a
    tensor reference; the model receives a piece's mask as its first additional
    forward argument."""

    def __init__(
        self,
        forward_func: Callable[..., Any],
        candidates: Sequence[Module],
        names: Sequence[str],
        additional_forward_args: Any,
        batch_size: Optional[int],
        show_progress: bool,
        mask: Optional[Tensor] = None,
        owner: Any = None,
    ) -> None:
        self._mask = mask
        # warned once (sequence_mask.warn_if_mask_in_forward_args): the explainer
        self._owner = self if owner is None else owner
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
        for piece_labels, outputs, order, mask in self._read(reference, self._candidates):
            call_order = call_order or order
            if criterion == "linear":
                for kept, output in zip(features, outputs):
                    kept.append(neuron_activities(output, mask))
            else:
                subsample.add(rows, [TokenRows.of(o, mask) for o in outputs], piece_labels)
            labels.append(piece_labels)
            rows += len(piece_labels)
        widths = [int(parts[0][0].numel()) if parts else 0 for parts in features]
        _check_rows(rows, widths)
        samples, sample_labels, sample_lengths = (
            subsample.result() if criterion != "linear" else ([], None, [])
        )
        return Probe(
            labels=union_over_ranks(torch.cat(labels)),
            call_order=call_order,
            rows_per_rank=rows_on_every_rank(rows),
            features=[union_over_ranks(torch.cat(parts)) for parts in features if parts],
            samples=samples,
            sample_labels=sample_labels,
            sample_lengths=sample_lengths,
        )

    def keep(
        self, reference: Any, position: int, rows_per_rank: Optional[list[int]]
    ) -> LayerReference:
        """The layer's centred activations on the reference set, with the labels.

        With ``rows_per_rank`` (or a tensor reference, whose length is known) the
        rows go into one preallocated buffer; otherwise, and for token sequences
        (whose pieces differ in length), each piece's layer output is kept as a
        block of its own.
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
        sequences = _Sequences()
        layer = [self._candidates[position]]
        for piece, (piece_labels, (output,), _, mask) in enumerate(self._read(reference, layer)):
            shape = tuple(output.shape[1:])
            token_rows = TokenRows.of(output, mask)
            if piece and (token_rows.lengths is None) != (sequences.width == 0):
                raise ValueError(
                    "the reference batches give the layer's output with a token axis under "
                    "their masks in some batches and without in others; give every batch "
                    "a mask of its tokens, or none"
                )
            rows = token_rows.rows
            if token_rows.lengths is not None:  # one block per piece: lengths differ
                sequences.add(token_rows)
                blocks.append(_owned(rows))
                labels.append(piece_labels)
                continue
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
        widths = [sequences.width] if sequences.width else [0 if total is None else len(total)]
        _check_rows(local_rows, widths)
        if rows_per_rank is not None and local_rows != rows_per_rank[rank]:
            raise _changed_between_passes()
        if sequences.width:
            return sequences.reference(blocks, shape, union_over_ranks(torch.cat(labels)))
        assert total is not None
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
    ) -> Iterator[tuple[Tensor, list[Tensor], list[int], Optional[Tensor]]]:
        """Per piece: the model's labels, the layers' outputs, the call order and the
        piece's mask (or None)."""
        first_shapes: Optional[list[tuple[Any, ...]]] = None
        layer_shapes: dict[int, tuple[Any, ...]] = {}
        batches = stream(
            reference, "reference", self._show_progress, "Reference batches", self._mask
        )
        for index, batch in enumerate(batches):
            if index == 0:
                warn_if_mask_in_forward_args(
                    self._owner, batch.inputs, self._additional_forward_args, batch.mask
                )
            batch_shapes = [_per_example_shape(t, batch.mask) for t in batch.inputs]
            first_shapes = first_shapes or batch_shapes
            if batch_shapes != first_shapes:
                raise ValueError(
                    f"reference batch {index} holds inputs shaped {_shown(batch_shapes)} "
                    f"per example, batch 0 {_shown(first_shapes)}: every reference "
                    "point is compared with every other in the layer, so give "
                    "reference inputs of one shape (token sequences of different "
                    "lengths with their masks)"
                )
            for piece in pieces(batch, self._batch_size):
                with observe_layer_calls(layers, [False] * len(layers)) as calls:
                    output, outputs = run_and_capture(
                        self._forward_func,
                        piece.inputs,
                        layers,
                        forward_args_with_mask(piece.mask, self._additional_forward_args),
                    )
                for layer, layer_output in zip(layers, outputs):
                    shape = _per_example_shape(layer_output, piece.mask)
                    seen = layer_shapes.setdefault(id(layer), shape)
                    if seen != shape:
                        raise ValueError(
                            f"layer {self._names[self._candidates.index(layer)]} outputs "
                            f"{shape} per example in one reference batch and {seen} in "
                            "another; give reference inputs of one shape"
                        )
                yield model_labels(output), [o.detach() for o in outputs], calls.order, piece.mask


def _per_example_shape(tensor: Tensor, mask: Optional[Tensor]) -> tuple[Any, ...]:
    """``tensor``'s shape per example, with ``"T"`` for the token axis of a mask
    (:func:`~captum_ssa._utils.sequence_mask.has_token_axis`; an input may be
    (N, T) itself), whose length may differ between batches."""
    if mask is not None and tensor.dim() >= 2 and tensor.shape[:2] == mask.shape:
        return ("T", *tensor.shape[2:])
    return tuple(tensor.shape[1:])


def neuron_activities(layer_output: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """The linear probe's features, ``(N, neurons)``: a unit's value, or a channel's
    spatial mean (dim 1 is the neuron axis); for a token layer ``(N, T, ...)`` under
    a mask each feature's mean over the real tokens."""
    if mask is not None and has_token_axis(layer_output, mask):
        return masked_mean(layer_output, mask).reshape(len(layer_output), -1)
    if layer_output.dim() == 1:
        return layer_output[:, None]
    return layer_output.reshape(*layer_output.shape[:2], -1).mean(2)


class _Sequences:
    """The reference's token sequences, read piece by piece: each piece's lengths,
    and the running sum and count per position (of the points that have it) for
    the mean."""

    def __init__(self) -> None:
        self.width = 0
        self.lengths: list[Tensor] = []
        self._totals: Optional[Tensor] = None  # (positions, width), float64
        self._counts: Optional[Tensor] = None  # (positions,)

    def add(self, piece: TokenRows) -> None:
        assert piece.lengths is not None
        self.width = piece.width
        rows = piece.rows.reshape(len(piece.rows), -1, piece.width)
        totals = rows.sum(0, dtype=torch.float64)  # rows are zero beyond their lengths
        counts = (torch.arange(rows.shape[1], device=rows.device) < piece.lengths[:, None]).sum(0)
        if self._totals is not None and self._counts is not None:
            totals = added_along_positions(self._totals, totals)
            counts = added_along_positions(self._counts, counts)
        self._totals, self._counts = totals, counts
        self.lengths.append(piece.lengths)

    def reference(
        self, blocks: list[Tensor], shape: tuple[int, ...], labels: Tensor
    ) -> LayerReference:
        """The reference of ``blocks`` (this rank's pieces, in order), centred in place
        by the mean per position over every rank's points that have it."""
        assert self._totals is not None and self._counts is not None
        longest = max(rows_on_every_rank(len(self._totals)))
        totals = all_reduce_sum(padded_along_positions(self._totals, longest))
        counts = all_reduce_sum(padded_along_positions(self._counts, longest))
        dtype = blocks[0].dtype
        mean = (totals / counts.clamp(min=1)[:, None]).to(dtype)
        lengths = self.lengths
        if is_distributed():
            width = longest * self.width
            blocks = [_union_of_blocks([_widened(block, width) for block in blocks])]
            lengths = [union_over_ranks(torch.cat(lengths))]
        for block, block_lengths in zip(blocks, lengths):
            rows = block.view(len(block), -1, self.width)
            positions = rows.shape[1]
            real = torch.arange(positions, device=block.device) < block_lengths[:, None]
            rows.sub_(mean[:positions] * real[:, :, None])
        return LayerReference(
            blocks, mean.reshape(-1), (longest, *shape[1:]), labels, torch.cat(lengths)
        )


def _widened(rows: Tensor, width: int) -> Tensor:
    """``rows`` with zero columns appended up to ``width``."""
    if rows.shape[1] >= width:
        return rows
    return torch.cat([rows, rows.new_zeros(len(rows), width - rows.shape[1])], 1)


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
        # token sequences: each kept point's length, and the units per position
        self._lengths: list[Optional[Tensor]] = [None] * layers
        self._widths = [0] * layers
        self._labels: Optional[Tensor] = None

    def add(self, first: int, outputs: list[TokenRows], labels: Tensor) -> None:
        if self._capacity is None:
            # every candidate's rows of the subsample together within the memory budget
            row_bytes = sum(o.rows[0].numel() * o.rows.element_size() for o in outputs)
            self._capacity = min(DEFAULT_DISPERSION_POINTS, rows_within_budget(row_bytes))
        rank, world = rank_and_world_size()
        new = torch.arange(first, first + len(labels), dtype=torch.float64) * world + rank
        indices = torch.cat([self._indices, new])
        keep = _smallest_keys(indices, self._capacity)
        self._indices = indices[keep]
        for position, output in enumerate(outputs):
            kept, rows = self._rows[position], output.rows
            if kept is not None:  # sequences of another length: zero columns make one width
                width = max(kept.shape[1], rows.shape[1])
                rows = torch.cat([_widened(kept, width), _widened(rows, width)])
            self._rows[position] = rows[keep.to(rows.device)]
            if output.lengths is not None:
                kept_lengths = self._lengths[position]
                lengths = output.lengths.cpu()
                if kept_lengths is not None:
                    lengths = torch.cat([kept_lengths, lengths])
                self._lengths[position], self._widths[position] = lengths[keep], output.width
        labels = labels.cpu()
        self._labels = (labels if self._labels is None else torch.cat([self._labels, labels]))[keep]

    def result(
        self,
    ) -> tuple[list[Tensor], Optional[Tensor], list[Optional[tuple[Tensor, int]]]]:
        """The rows per candidate, the labels and, per candidate of token sequences, the
        lengths and units per position, over all ranks, in index order."""
        assert self._labels is not None and self._capacity is not None
        indices = union_over_ranks(self._indices)
        keep = _smallest_keys(indices, self._capacity)
        keep = keep[indices[keep].argsort()]  # stream order, as a full reference would be
        rows = []
        for r in self._rows:
            if r is not None:
                width = max(rows_on_every_rank(r.shape[1]))
                rows.append(union_over_ranks(_widened(r, width))[keep.to(r.device)])
        lengths: list[Optional[tuple[Tensor, int]]] = [
            None if kept is None else (union_over_ranks(kept)[keep], width)
            for kept, width in zip(self._lengths, self._widths)
        ]
        return rows, union_over_ranks(self._labels)[keep], lengths


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
