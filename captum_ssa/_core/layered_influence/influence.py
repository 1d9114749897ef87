r"""The monotone influence measure on a layer's activations (Sliwinski, Strobel and Zick,
*Axiomatic Characterization of Data-Driven Influence Measures for Classification*, AAAI 2019).

For a query point :math:`h(x)` with label :math:`f(x)` and a reference set
:math:`R` labelled by the model,

.. math::
    \phi(x) = \sum_{y \in R,\ f(y) \ne f(x)}
              \alpha(\lVert h(x) - h(y) \rVert)\, (h(x) - h(y)).

Splitting the sum, :math:`\phi(x) = h(x) \sum_y w_{xy} - \sum_y w_{xy} h(y)`
with :math:`w_{xy} = \alpha(r_{xy})`, so a block of queries needs one matrix
product for the squared distances
(:math:`\lVert a \rVert^2 + \lVert b \rVert^2 - 2 a \cdot b`) and one for
:math:`W R`. Blocks of at most ``points_per_chunk`` queries by
``points_per_chunk`` reference points bound the temporary memory, whatever the
size of ``R``: the result is accumulated in place, so besides it only a few
``points_per_chunk x points_per_chunk`` blocks (and one number per reference
point) exist.

Both formulas cancel for a pair much closer than the points' norms: the
squared distance loses every digit below ``eps (||a||^2 + ||b||^2)``, and
:math:`w (h(x) - h(y))` taken as a difference of two large products loses the
same. Such *near* pairs (rare: a differently-labelled point almost on top of
the query) leave the matrix products and are summed from their own difference
in float64 instead, so they are neither dropped nor mis-weighted; only exactly
coincident points (:math:`r = 0`) are skipped.

Token sequences of different lengths (a layer output ``(N, T, ...)`` with a
mask) are compared on the positions both have: each row holds an example's
real tokens first (pads removed), ``width`` units per position, zeros after,
and the distance of a pair, and its difference, cover the first
:math:`\min(L_x, L_y)` positions, their common prefix. The squared norms of
that prefix come from each row's running sum of squared norms per position;
the dot products need nothing more, since a row is zero beyond its length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from captum_ssa._utils.memory_budget import get_memory_budget
from captum_ssa._utils.validation import positive_int

Alpha = Callable[[Tensor], Tensor]

# The fastest block size measured on CPU (see benchmarks/README.md); smaller where
# the memory budget asks for it.
DEFAULT_POINTS_PER_CHUNK = 1024

# A (queries x reference points) block holds two float blocks (squared norms and
# distances, the second becoming the weights in place) and two boolean masks; one
# float block more leaves a margin for alpha's own temporaries.
_FLOAT_BLOCKS_PER_PAIR = 3
_MASKS_PER_PAIR = 2

# The squared distance ||a||^2 + ||b||^2 - 2ab carries a rounding error of
# roughly sqrt(units) * eps * (||a||^2 + ||b||^2). Pairs below this many eps
# times (||a||^2 + ||b||^2) go to the exact path: beyond it the relative error
# of r^2 (and of alpha(r)) stays under ~1% even for layers of 10^4 units,
# while at float32 it only catches points within ~2% of the norms of each
# other, which real data rarely holds more than a handful of.
_NEAR_EPS_FACTOR = 4096


def default_points_per_chunk(element_size: int) -> int:
    """The block size, in query and reference points, within the memory budget."""
    budget = get_memory_budget()
    per_pair = _FLOAT_BLOCKS_PER_PAIR * element_size + _MASKS_PER_PAIR
    return max(1, min(DEFAULT_POINTS_PER_CHUNK, math.isqrt(budget // per_pair)))


def check_alpha(alpha: Optional[Alpha]) -> None:
    """Raise a clear error unless ``alpha`` is None or looks non-negative and
    non-increasing on distances from 1e-3 to 1e3."""
    if alpha is None:
        return
    if not callable(alpha):
        raise TypeError(
            "alpha must be a callable r -> alpha(r) on a tensor of distances, or "
            f"None for 1/r^2; got {type(alpha).__name__}"
        )
    probe = torch.logspace(-3, 3, 61, dtype=torch.float64)
    values = alpha(probe)
    if not isinstance(values, Tensor) or values.shape != probe.shape:
        raise ValueError(
            "alpha must map a tensor of distances to a tensor of weights of the same shape"
        )
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ValueError("alpha(r) must be finite and >= 0 for every r > 0")
    if (values[1:] > values[:-1] * (1 + 1e-9) + 1e-12).any():
        raise ValueError(
            "alpha must be non-increasing in the distance r (a monotone influence "
            "measure weighs nearer differently-labelled points at least as much)"
        )


def monotone_influence(
    queries: Tensor,
    query_labels: Tensor,
    reference: Union[Tensor, Sequence[Tensor]],
    reference_labels: Tensor,
    alpha: Optional[Alpha] = None,
    points_per_chunk: Optional[int] = None,
    lengths: Optional[SequenceLengths] = None,
) -> Tensor:
    r"""The influence :math:`\phi(x)` of every unit for every query.

    Args:
        queries: ``(B, U)`` activations of the query points.
        query_labels: ``(B,)`` their labels: the class each query's influence
            is taken against (reference points of this label are left out).
        reference: ``(M, U)`` activations of the reference points, on the
            same device and with the same dtype, or a list of row blocks of
            them (``(M_j, U)`` each, in the order of ``reference_labels``),
            so that a reference set kept in pieces is never concatenated.
            Centring it (and the queries by the same vector) leaves
            :math:`\phi` unchanged and makes the distances more accurate.
        reference_labels: ``(M,)`` their labels.
        alpha: :math:`\alpha(r)`, a non-negative non-increasing function
            applied elementwise to a tensor of distances; None for
            :math:`1 / r^2`. Its weights are cast to the activations' dtype.
            Pairs at distance 0 are skipped.
        points_per_chunk: the most queries and the most reference points in
            one block; besides the ``(B, U)`` result, temporary memory is a
            few ``points_per_chunk x points_per_chunk`` blocks. Default: 1024,
            or fewer where the memory budget
            (:func:`~captum_ssa._utils.memory_budget.get_memory_budget`) asks.
        lengths: for token sequences (see the module docstring): the rows'
            lengths in positions and the units per position. The rows then
            need not share a width (a block of the reference, or the queries,
            may be longer than another), and a pair is compared on its common
            prefix; the influence is zero beyond each query's length.

    Returns:
        ``(B, U)`` influence, one row per query.
    """
    chunk = positive_int("points_per_chunk", points_per_chunk)
    chunk = default_points_per_chunk(queries.element_size()) if chunk is None else chunk
    influence = torch.empty_like(queries)
    # nonzero() waits for a GPU, not for the CPU: on a GPU a query block is first
    # summed without gathering the (rare) near pairs, and again only if it has any
    gather_at_once = queries.device.type == "cpu"
    if lengths is not None:
        sequence_blocks = _sequence_blocks(reference, reference_labels, lengths, chunk)
        for start in range(0, queries.shape[0], chunk):
            block = slice(start, start + chunk)
            sequence_arguments = (
                influence[block],
                queries[block],
                query_labels[block],
                lengths.queries[block],
                sequence_blocks,
                alpha,
                chunk,
                lengths.width,
            )
            if _influence_of_sequence_block(*sequence_arguments, gather_near=gather_at_once):
                _influence_of_sequence_block(*sequence_arguments, gather_near=True)
        return influence
    reference_blocks = _reference_blocks(reference, reference_labels, chunk)
    for start in range(0, queries.shape[0], chunk):
        block = slice(start, start + chunk)
        arguments = (
            influence[block],
            queries[block],
            query_labels[block],
            reference_blocks,
            alpha,
            chunk,
        )
        if _influence_of_query_block(*arguments, gather_near=gather_at_once):
            _influence_of_query_block(*arguments, gather_near=True)
    return influence


_ReferenceBlock = tuple[Tensor, Tensor, Tensor]  # rows, their squared norms, their labels


@dataclass(frozen=True)
class SequenceLengths:
    """The lengths, in positions, of the query and reference rows of token
    sequences, and the units per position (see the module docstring)."""

    queries: Tensor  # (B,)
    reference: Tensor  # (M,), in the order of the reference labels
    width: int


# rows, their running squared norms per position (R, T + 1), their labels, their lengths
_SequenceBlock = tuple[Tensor, Tensor, Tensor, Tensor]


def _running_squared_norms(rows: Tensor, width: int) -> Tensor:
    """``(R, T + 1)``: entry ``[r, t]`` is the squared norm of row ``r``'s first ``t``
    positions."""
    per_position = torch.linalg.vector_norm(rows.reshape(len(rows), -1, width), dim=2).square()
    return torch.cat([per_position.new_zeros(len(rows), 1), per_position.cumsum(1)], 1)


def _sequence_blocks(
    reference: Union[Tensor, Sequence[Tensor]],
    labels: Tensor,
    lengths: SequenceLengths,
    chunk: int,
) -> list[_SequenceBlock]:
    """Views of at most ``chunk`` reference rows each, with their running squared
    norms, labels and lengths."""
    blocks = []
    offset = 0
    for part in [reference] if isinstance(reference, Tensor) else reference:
        for start in range(0, part.shape[0], chunk):
            rows = part[start : start + chunk]
            span = slice(offset + start, offset + start + len(rows))
            running = _running_squared_norms(rows, lengths.width)
            blocks.append((rows, running, labels[span], lengths.reference[span].to(rows.device)))
        offset += part.shape[0]
    return blocks


def _influence_of_sequence_block(
    out: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    query_lengths: Tensor,
    reference_blocks: list[_SequenceBlock],
    alpha: Optional[Alpha],
    points_per_chunk: int,
    width: int,
    gather_near: bool,
) -> bool:
    """:func:`_influence_of_query_block` for token sequences, each pair on its common
    prefix: ``phi_t(x) = sum_y w_xy (x_t - y_t) [t < min(L_x, L_y)]``. The second
    term is one product ``W R`` (a reference row is zero beyond its length); the
    first needs, per query position, the weights of the reference points that
    have it."""
    positions = queries.shape[1] // width
    query_lengths = query_lengths.to(queries.device)
    query_running = _running_squared_norms(queries, width)
    weight_totals = queries.new_zeros(len(queries), positions)
    near_margin = _NEAR_EPS_FACTOR * torch.finfo(queries.dtype).eps
    near_left_out = torch.zeros((), dtype=torch.bool, device=queries.device)
    out.zero_()
    for reference, reference_running, reference_labels, reference_lengths in reference_blocks:
        common = min(positions, reference.shape[1] // width) * width
        prefix = torch.minimum(query_lengths[:, None], reference_lengths[None, :])
        squared_norms = query_running.gather(1, prefix) + reference_running.gather(1, prefix.T).T
        squared_distances = squared_norms.addmm(
            queries[:, :common], reference[:, :common].T, alpha=-2
        )
        counted = query_labels[:, None] != reference_labels[None, :]
        near = squared_distances <= squared_norms.mul_(near_margin)
        near &= counted
        counted ^= near
        if gather_near:
            near_pairs = near.nonzero()
        else:
            near_left_out |= near.any()
        del near
        weights = _pair_weights(squared_distances, counted, alpha)
        has_position = torch.arange(positions, device=queries.device) < reference_lengths[:, None]
        weight_totals.addmm_(weights, has_position.to(weights.dtype))
        out[:, :common].addmm_(weights, reference[:, :common], alpha=-1)
        if gather_near and len(near_pairs):
            _add_near_sequence_pairs(
                out, queries, reference, near_pairs, prefix, alpha, points_per_chunk, width
            )
    by_position = out.view(len(out), positions, width)
    by_position.addcmul_(queries.view(len(out), positions, width), weight_totals[:, :, None])
    # a reference point longer than the query reaches beyond it in W R: not a position of x
    beyond = torch.arange(positions, device=queries.device) >= query_lengths[:, None]
    by_position.masked_fill_(beyond[:, :, None], 0)
    return bool(near_left_out)


def _add_near_sequence_pairs(
    out: Tensor,
    queries: Tensor,
    reference: Tensor,
    near_pairs: Tensor,
    prefix: Tensor,
    alpha: Optional[Alpha],
    points_per_chunk: int,
    width: int,
) -> None:
    """:func:`_add_near_pairs` for token sequences: each pair's difference over its
    common prefix ``prefix[query row, reference row]`` positions."""
    common = min(queries.shape[1], reference.shape[1])
    position_of_unit = torch.arange(common, device=queries.device) // width
    for piece in near_pairs.split(points_per_chunk):
        query_rows, reference_rows = piece.unbind(1)
        inside = position_of_unit[None, :] < prefix[query_rows, reference_rows][:, None]
        difference = (
            queries[query_rows, :common].double() - reference[reference_rows, :common].double()
        ) * inside
        squared_distances = difference.square().sum(1)
        apart = squared_distances > 0
        weights = _pair_weights(squared_distances, apart, alpha)
        out[:, :common].index_add_(0, query_rows, difference.mul_(weights[:, None]).to(out.dtype))


def _reference_blocks(
    reference: Union[Tensor, Sequence[Tensor]], labels: Tensor, chunk: int
) -> list[_ReferenceBlock]:
    """Views of at most ``chunk`` reference rows each, with their squared norms
    (one number per reference point) and labels."""
    blocks = []
    offset = 0
    for part in [reference] if isinstance(reference, Tensor) else reference:
        for start in range(0, part.shape[0], chunk):
            rows = part[start : start + chunk]
            # a reduction kernel, not rows * rows: no block-sized temporary
            squared = torch.linalg.vector_norm(rows, dim=1).square()
            blocks.append((rows, squared, labels[offset + start : offset + start + len(rows)]))
        offset += part.shape[0]
    return blocks


def _influence_of_query_block(
    out: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    reference_blocks: list[_ReferenceBlock],
    alpha: Optional[Alpha],
    points_per_chunk: int,
    gather_near: bool,
) -> bool:
    """Write phi for a block of queries into ``out``, which is their only
    query-sized buffer: ``out = queries * sum_y w - sum_y w h(y)`` over the
    far pairs, plus, with ``gather_near``, the near pairs' exact contributions.
    Returns whether near pairs were left out (never, with ``gather_near``)."""
    queries_squared = torch.linalg.vector_norm(queries, dim=1).square()
    weight_totals = torch.zeros_like(queries_squared)
    near_margin = _NEAR_EPS_FACTOR * torch.finfo(queries.dtype).eps
    near_left_out = torch.zeros((), dtype=torch.bool, device=queries.device)
    out.zero_()
    for reference, reference_squared, reference_labels in reference_blocks:
        # few passes over each block: in-place ops where the operand is not reused
        squared_norms = queries_squared[:, None] + reference_squared[None, :]
        squared_distances = squared_norms.addmm(queries, reference.T, alpha=-2)
        counted = query_labels[:, None] != reference_labels[None, :]
        near = squared_distances <= squared_norms.mul_(near_margin)
        near &= counted
        counted ^= near  # near is a subset of counted: this removes it
        if gather_near:
            near_pairs = near.nonzero()
        else:
            near_left_out |= near.any()
        del near  # freed before the weights are allocated: one block less at the peak
        weights = _pair_weights(squared_distances, counted, alpha)
        weight_totals += weights.sum(1)
        out.addmm_(weights, reference, alpha=-1)
        if gather_near and len(near_pairs):
            _add_near_pairs(out, queries, reference, near_pairs, alpha, points_per_chunk)
    out.addcmul_(queries, weight_totals[:, None])
    return bool(near_left_out)


def _add_near_pairs(
    out: Tensor,
    queries: Tensor,
    reference: Tensor,
    near_pairs: Tensor,
    alpha: Optional[Alpha],
    points_per_chunk: int,
) -> None:
    """Add alpha(r) (h(x) - h(y)) of the ``(query row, reference row)`` pairs
    to ``out``, from each pair's difference in float64, ``points_per_chunk``
    pairs at a time; exactly coincident pairs are skipped."""
    for piece in near_pairs.split(points_per_chunk):
        query_rows, reference_rows = piece.unbind(1)
        difference = queries[query_rows].double() - reference[reference_rows].double()
        squared_distances = difference.square().sum(1)
        apart = squared_distances > 0
        weights = _pair_weights(squared_distances, apart, alpha)
        out.index_add_(0, query_rows, difference.mul_(weights[:, None]).to(out.dtype))


def _pair_weights(squared_distances: Tensor, counted: Tensor, alpha: Optional[Alpha]) -> Tensor:
    """alpha(r) for the counted pairs, 0 elsewhere; overwrites ``squared_distances``.

    Uncounted pairs are moved to a tiny positive distance first, so alpha is
    never evaluated at r = 0 (or at the small negative values that rounding
    can give) before their weight is set to 0.
    """
    safe = squared_distances.clamp_(min=torch.finfo(squared_distances.dtype).tiny)
    if alpha is None:
        return safe.reciprocal_().mul_(counted)
    weights = alpha(safe.sqrt_())
    if not isinstance(weights, Tensor) or weights.shape != safe.shape:
        raise ValueError(
            "alpha must return a tensor of weights shaped like its tensor of distances"
        )
    # an alpha computing in another dtype (e.g. float64 constants) is not an error
    weights = weights.to(safe.dtype)
    if not bool(((weights >= 0) | ~counted).all()):
        raise ValueError("alpha must return a weight >= 0 for every distance")
    return torch.where(counted, weights, 0.0)
