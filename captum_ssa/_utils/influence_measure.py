r"""The monotone influence measure on a layer's activations (METHODS.md §4.2).

For a query point :math:`h(x)` with label :math:`f(x)` and a reference set
:math:`R` labelled by the model,

.. math::
    \phi(x) = \sum_{y \in R,\ f(y) \ne f(x)}
              \alpha(\lVert h(x) - h(y) \rVert)\, (h(x) - h(y)).

Splitting the sum, :math:`\phi(x) = h(x) \sum_y w_{xy} - \sum_y w_{xy} h(y)`
with :math:`w_{xy} = \alpha(r_{xy})`, so a block of queries needs one matrix
product for the squared distances
(:math:`\lVert a \rVert^2 + \lVert b \rVert^2 - 2 a \cdot b`) and one for
:math:`W R`. Blocks of at most ``chunk_size`` queries by ``chunk_size``
reference points bound the temporary memory, whatever the size of ``R``: the
result is accumulated in place, so besides it only a few
``chunk_size x chunk_size`` blocks (and one number per reference point) exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor

Alpha = Callable[[Tensor], Tensor]

DEFAULT_CHUNK_SIZE = 1024

# A squared distance computed as ||a||^2 + ||b||^2 - 2ab carries a rounding
# error of a few eps * (||a||^2 + ||b||^2); below this many eps the two points
# cannot be told apart from coincident ones and are skipped, as r = 0 is.
_COINCIDENT_EPS_FACTOR = 64


def inverse_square(distance: Tensor) -> Tensor:
    r"""The default weighting :math:`\alpha(r) = 1 / r^2`."""
    return distance.pow(-2)


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
    reference: Tensor,
    reference_labels: Tensor,
    alpha: Optional[Alpha] = None,
    chunk_size: Optional[int] = None,
) -> Tensor:
    r"""The influence :math:`\phi(x)` of every unit for every query.

    Args:
        queries: ``(B, U)`` activations of the query points.
        query_labels: ``(B,)`` their labels.
        reference: ``(M, U)`` activations of the reference points, on the
            same device and with the same dtype. Centring it (and the queries
            by the same vector) leaves :math:`\phi` unchanged and makes the
            distances more accurate.
        reference_labels: ``(M,)`` their labels.
        alpha: :math:`\alpha(r)`, a non-negative non-increasing function
            applied elementwise to a tensor of distances; None for
            :math:`1 / r^2`. Pairs at distance 0 are skipped.
        chunk_size: the most queries and the most reference points in one
            block; besides the ``(B, U)`` result, temporary memory is a few
            ``chunk_size x chunk_size`` blocks. Default: 1024.

    Returns:
        ``(B, U)`` influence, one row per query.
    """
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    influence = torch.empty_like(queries)
    # a reduction kernel, not reference * reference: no reference-sized temporary
    reference_squared = torch.linalg.vector_norm(reference, dim=1).square()
    for start in range(0, queries.shape[0], chunk_size):
        block = slice(start, start + chunk_size)
        _influence_of_query_block(
            influence[block],
            queries[block],
            query_labels[block],
            reference,
            reference_squared,
            reference_labels,
            alpha,
            chunk_size,
        )
    return influence


def _influence_of_query_block(
    out: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    reference: Tensor,
    reference_squared: Tensor,
    reference_labels: Tensor,
    alpha: Optional[Alpha],
    chunk_size: int,
) -> None:
    """Write phi for a block of queries into ``out``, which is their only
    query-sized buffer: ``out = queries * sum_y w - sum_y w h(y)``."""
    queries_squared = torch.linalg.vector_norm(queries, dim=1).square()
    weight_totals = torch.zeros_like(queries_squared)
    coincident_eps = _COINCIDENT_EPS_FACTOR * torch.finfo(queries.dtype).eps
    out.zero_()
    for start in range(0, reference.shape[0], chunk_size):
        block = slice(start, start + chunk_size)
        # few passes over each block: in-place ops where the operand is not reused
        squared_norms = queries_squared[:, None] + reference_squared[None, block]
        squared_distances = squared_norms.addmm(queries, reference[block].T, alpha=-2)
        counted = query_labels[:, None] != reference_labels[None, block]
        counted &= squared_distances > squared_norms.mul_(coincident_eps)
        weights = _pair_weights(squared_distances, counted, alpha)
        weight_totals += weights.sum(1)
        out.addmm_(weights, reference[block], alpha=-1)
    out.addcmul_(queries, weight_totals[:, None])


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
    if weights.shape != safe.shape or not bool(((weights >= 0) | ~counted).all()):
        raise ValueError(
            "alpha must return one weight >= 0 for every distance (same shape as its input)"
        )
    return torch.where(counted, weights, 0.0)
