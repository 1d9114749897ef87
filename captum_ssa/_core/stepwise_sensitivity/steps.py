"""The four Steps of step-wise sensitivity analysis, one function each.

:func:`relevance_tensor` (I), :func:`aggregate_datapoints` (II),
:func:`aggregate_upper_neurons` (III) and :func:`threshold` (IV), as Dimanov
and Jamnik define them; :class:`RunningAggregate` is Step II over a stream of
batches, a running sum (mean) or a running count of outliers (Tukey, which is
decided per example), so that a streamed matrix equals the one-batch one.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from captum_ssa._core.stepwise_sensitivity.relevance import (
    LayerPair,
    RelevanceFunction,
    absolute_applies,
)
from captum_ssa._utils.distributed import all_reduce_sum

AGGREGATIONS = ("mean", "tukey")


# ---------------------------------------------------------------- Step I


def relevance_tensor(
    pair: LayerPair, upper_neurons: Tensor, relevance: RelevanceFunction, absolute: bool = True
) -> Tensor:
    r"""
    Step I: the relevance of every lower neuron to each upper neuron, per example.

    Args:
        pair (LayerPair): The two layers and their outputs from one forward pass.
        upper_neurons (Tensor): 1-D indices of the upper neurons (the set S).
        relevance (Callable): A relevance function (see
                    ``captum_ssa.relevance``), e.g. ``relevance.gradient``.
        absolute (bool, optional): Take absolute values (before spatial means).
                    Default: True

    Returns:
        *Tensor* :math:`\omega` shaped ``(len(upper_neurons), N, K)``:
        :math:`\omega[j, i, k]` is the relevance of lower neuron ``k`` to upper
        neuron ``upper_neurons[j]`` on example ``i``.

    Raises:
        ValueError: when the relevance function returns the wrong shape, or
                    NaN or infinite values (e.g. after an overflow), and for
                    ``absolute=False`` with a relevance that declares it does
                    not apply (``Relevance.absolute_applies``).

    Examples::

        >>> from captum_ssa import relevance
        >>> omega = relevance_tensor(pair, torch.tensor([3]), relevance.gradient)
    """
    if not absolute:
        check_signed_relevance(relevance)
    omega = relevance(pair, upper_neurons, absolute)
    expected = (len(upper_neurons), pair.lower_output.shape[0], pair.lower_output.shape[1])
    if not isinstance(omega, Tensor) or tuple(omega.shape) != expected:
        shape = tuple(omega.shape) if isinstance(omega, Tensor) else type(omega).__name__
        raise ValueError(
            f"the relevance function must return a tensor shaped (upper neurons, examples, "
            f"lower neurons) = {expected} for {pair.upper_name!r} over {pair.lower_name!r}, "
            f"got {shape}"
        )
    # checked here, before Step II: Tukey's fences would turn NaN into "no outlier".
    # A finite sum needs every entry finite; only a non-finite one (rare: an overflowing
    # sum of finite values) pays for the element-wise check.
    if not torch.isfinite(omega.sum()) and not torch.isfinite(omega).all():
        name = getattr(relevance, "__name__", type(relevance).__name__)
        kind = "NaN" if torch.isnan(omega).any() else "infinite (Inf)"
        raise ValueError(
            f"the relevance {name!r} of {pair.lower_name!r} to {pair.upper_name!r} is {kind} "
            "for some neurons and examples; activations or gradients overflow (e.g. in "
            "float16, or with very large weights). Run the model in float32 or float64, "
            "or check its weights and inputs."
        )
    return omega


def check_signed_relevance(relevance: RelevanceFunction) -> None:
    """``absolute=False`` is an error for a relevance it does not apply to."""
    if not absolute_applies(relevance):
        name = getattr(relevance, "__name__", type(relevance).__name__)
        raise ValueError(
            f"relevance={name!r} is one of the paper's strategies (or a Relevance that "
            "declares absolute_applies = False), which fix where the absolute value goes; "
            "absolute=False applies to 'gradient', 'activation', 'gradient_x_activation', "
            "'weight' and 'weight_activation'"
        )


# ---------------------------------------------------------------- Step II


def quantiles(values: Tensor, fractions: Tensor) -> Tensor:
    """Quantiles along the last dim with linear interpolation (NumPy's default).

    Returns a tensor shaped ``(len(fractions), *values.shape[:-1], 1)``. Unlike
    ``torch.quantile`` it has no size limit.
    """
    ordered = values.sort(dim=-1).values
    positions = fractions.to(values) * (values.shape[-1] - 1)
    below = positions.floor().long()
    above = positions.ceil().long()
    fraction = (positions - below).reshape(-1, *([1] * values.dim()))
    low = ordered[..., below].movedim(-1, 0).unsqueeze(-1)
    high = ordered[..., above].movedim(-1, 0).unsqueeze(-1)
    return low + fraction * (high - low)


def aggregate_datapoints(
    relevance_tensor: Tensor, aggregation: str = "mean", datapoints: Optional[Tensor] = None
) -> Tensor:
    r"""
    Step II: aggregate the relevance tensor over the examples.

    Args:
        relevance_tensor (Tensor): :math:`\omega` shaped ``(M, N, K)`` (Step I).
        aggregation (str, optional): ``"mean"``: the mean over examples.
                    ``"tukey"``: the fraction of examples on which ``k`` is an
                    outlier of its row :math:`\omega[n, i, :]`, above
                    :math:`Q_3 + 1.5\,\mathrm{IQR}` (Tukey's fence); in [0, 1].
                    Default: ``"mean"``
        datapoints (Tensor, optional): Boolean ``(M, N)``: which examples count
                    for each upper neuron (with per-example targets, the
                    examples of that target). Default: all of them.

    Returns:
        *Tensor* relevance matrix :math:`\omega[n, k]` shaped ``(M, K)``.

    Examples::

        >>> aggregate_datapoints(torch.rand(2, 10, 5), "tukey").shape
        torch.Size([2, 5])
    """
    sums, counts = summed_over_datapoints(relevance_tensor, aggregation, datapoints)
    return sums / counts.clamp(min=1)[:, None]


def summed_over_datapoints(
    relevance_tensor: Tensor, aggregation: str = "mean", datapoints: Optional[Tensor] = None
) -> tuple[Tensor, Tensor]:
    r"""
    The sums behind Step II: :func:`aggregate_datapoints` is ``sums / counts``.

    Returns the ``(M, K)`` sum over the counted examples of the relevance
    (``"mean"``) or of the outlier indicator (``"tukey"``, decided per
    example), and the ``(M,)`` number of counted examples per upper neuron.
    Sums of batches add up to the sums of their union, which is what lets
    Step II stream.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    values = relevance_tensor
    if aggregation == "tukey":
        first, third = quantiles(values, torch.tensor([0.25, 0.75]))
        values = (values > third + 1.5 * (third - first)).to(relevance_tensor.dtype)
    if datapoints is None:
        counts = torch.full((values.shape[0],), values.shape[1], dtype=values.dtype)
        return values.sum(1), counts.to(values.device)
    counted = datapoints.to(values.device)[..., None]
    total = torch.where(counted, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return total.sum(1), counted.sum(1).flatten().to(values.dtype)


class RunningAggregate:
    r"""
    Step II over a stream: running sums per upper neuron, all-reduced across ranks.

    Holds float64 sums ``(C, K)`` and counts ``(C,)`` for every upper neuron
    ``C`` a batch may compute (rows not computed on a batch add nothing), so
    memory does not grow with the data. :meth:`matrix` is Step II's matrix,
    the one :func:`aggregate_datapoints` gives on the union of the batches.

    Args:
        upper_size (int): Upper neurons ``C``.
        lower_size (int): Lower neurons ``K``.
        aggregation (str): ``"mean"`` or ``"tukey"``.
    """

    def __init__(self, upper_size: int, lower_size: int, aggregation: str) -> None:
        self.aggregation = aggregation
        self.sums = torch.zeros(upper_size, lower_size, dtype=torch.float64)
        self.counts = torch.zeros(upper_size, dtype=torch.float64)

    def add(self, rows: Tensor, omega: Tensor, datapoints: Optional[Tensor] = None) -> None:
        """Add Step I's ``omega`` ``(len(rows), N, K)`` of upper neurons ``rows``."""
        sums, counts = summed_over_datapoints(omega.detach(), self.aggregation, datapoints)
        self.sums.index_add_(0, rows, sums.cpu().double())
        self.counts.index_add_(0, rows, counts.cpu().double())

    def all_reduce(self) -> None:
        """Sum over the ranks of ``torch.distributed`` (nothing in one process)."""
        all_reduce_sum(self.sums)
        all_reduce_sum(self.counts)

    def matrix(self, rows: Tensor, dtype: torch.dtype) -> Tensor:
        """Step II's ``(len(rows), K)`` matrix of upper neurons ``rows``, in ``dtype``."""
        counts = self.counts[rows].clamp(min=1)[:, None]
        return (self.sums[rows] / counts).to(dtype)


# ---------------------------------------------------------------- Step III


def aggregate_upper_neurons(
    relevance_matrix: Tensor, upper_relevance: Optional[Tensor] = None
) -> Tensor:
    r"""
    Step III: the relevance vector :math:`r[k] = \mathrm{mean}_n\, \omega[n, k]`.

    With ``upper_relevance``, the relevance-weighted aggregation, an extension
    beyond the paper: each upper neuron's row counts in proportion to that
    neuron's own relevance :math:`r_n`,
    :math:`r[k] = \sum_n r_n\, \omega[n, k] / \sum_n r_n`. The paper's mean
    counts every kept upper neuron alike, so the neurons kept at the upper
    layer's threshold for little relevance outvote the few that matter; the
    weights let the relevance found above carry down. Upper relevances that
    are all zero weigh nothing, and the plain mean is returned.

    Args:
        relevance_matrix (Tensor): :math:`\omega[n, k]` shaped ``(M, K)`` (Step II).
        upper_relevance (Tensor, optional): :math:`r_n` shaped ``(M,)``, the
                    Step III relevance of each upper neuron (non-negative).
                    Default: None (the paper's mean)

    Returns:
        *Tensor* shaped ``(K,)``: how much each lower neuron matters to the
        upper set as a whole.

    Examples::

        >>> aggregate_upper_neurons(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
        tensor([2., 1.])
        >>> aggregate_upper_neurons(torch.tensor([[1.0, 0.0], [3.0, 2.0]]),
        ...                         torch.tensor([3.0, 1.0]))
        tensor([1.5000, 0.5000])
    """
    if upper_relevance is None:
        return relevance_matrix.mean(0)
    weights = upper_relevance.to(relevance_matrix)
    if weights.shape != relevance_matrix.shape[:1]:
        raise ValueError(
            f"upper_relevance must hold one value per row of the relevance matrix, "
            f"{relevance_matrix.shape[0]}, got shape {tuple(weights.shape)}"
        )
    total = weights.sum()
    if total == 0:
        return relevance_matrix.mean(0)
    return (weights @ relevance_matrix) / total


UPPER_AGGREGATIONS = ("mean", "relevance_weighted")


# ---------------------------------------------------------------- Step IV


def _most_relevant(values: Tensor, percentile: float, branching: Optional[int]) -> Tensor:
    """Boolean mask over the last dim: the top ``branching`` (ties: lower index), or
    every value above the ``percentile`` (``percentile=0``: every value), with the
    maximum kept when it is not zero. An all-zero row keeps nothing (with
    ``branching``, exactly the ``branching`` it asks for, lowest indices first)."""
    if branching is not None:
        order = values.argsort(dim=-1, descending=True, stable=True)
        mask = torch.zeros_like(values, dtype=torch.bool)
        return mask.scatter(-1, order[..., :branching], True)
    relevant = (values != 0).any(-1, keepdim=True)
    if percentile == 0:
        return relevant.expand(values.shape)
    (cut,) = quantiles(values, torch.tensor([percentile / 100.0]))
    # a constant row has nothing strictly above its percentile: keep its maximum
    highest = values.max(-1, keepdim=True).values
    return ((values > cut) | (values == highest)) & relevant


def _first_in_order(order: Tensor, size: int, count: int) -> Tensor:
    """Boolean mask of the first ``count`` indices of ``order``."""
    mask = torch.zeros(size, dtype=torch.bool, device=order.device)
    mask[order[:count]] = True
    return mask


def threshold(
    relevance_matrix: Tensor,
    relevance_vector: Tensor,
    upper_neurons: Tensor,
    mode: str = "global",
    percentile: float = 50,
    branching: Optional[int] = None,
    max_neurons: Optional[int] = None,
) -> tuple[Tensor, Tensor]:
    r"""
    Step IV: keep the relevant lower neurons, and the edges to them.

    Global mode keeps the neurons whose Step III relevance is above the
    ``percentile`` of the vector, or its top ``branching``. Local mode keeps,
    for each upper neuron ``n``, its own top ``branching`` by
    :math:`\omega[n, :]` (or those above the percentile of that row): the set
    :math:`B^n`; the lower set is the union. ``max_neurons`` caps the lower
    set: in local mode ranked by how many upper neurons chose a neuron, then
    by the summed weight of those choices; in global mode by relevance. Ties
    always go to the lower index, so the result is deterministic. A row or
    vector with nothing strictly above its percentile keeps its maximum;
    ``percentile=0`` keeps every neuron, ties included. A row or vector that
    is all zero (nothing relevant) keeps no neuron, whatever the percentile:
    only ``branching``, which asks for a number of neurons, still gets them.

    Args:
        relevance_matrix (Tensor): :math:`\omega[n, k]` shaped ``(M, K)``.
        relevance_vector (Tensor): :math:`r` shaped ``(K,)`` (Step III).
        upper_neurons (Tensor): the ``M`` upper neuron indices, one per row.
        mode (str, optional): ``"global"`` or ``"local"``. Default: ``"global"``
        percentile (float, optional): In [0, 100]. Default: 50
        branching (int, optional): Keep the top ``branching`` instead of a
                    percentile. Default: None
        max_neurons (int, optional): The most lower neurons kept. Default: None

    Returns:
        *tuple[Tensor, Tensor]*: the sorted kept lower neuron indices, and the
        edges as ``(E, 2)`` ``(lower index, upper index)`` pairs, sorted: all
        pairs between the two sets in global mode, the kept choices
        :math:`(k \in B^n, n)` in local mode.

    Examples::

        >>> matrix = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
        >>> threshold(matrix, matrix.mean(0), torch.tensor([0, 4]), "local", branching=1)
        (tensor([0, 1]), tensor([[0, 0], [1, 4]]))
    """
    upper_neurons = upper_neurons.to(relevance_matrix.device)
    size = relevance_vector.shape[0]
    if mode == "global":
        kept = _most_relevant(relevance_vector, percentile, branching)
        if max_neurons is not None and int(kept.sum()) > max_neurons:
            ranked = torch.where(
                kept, relevance_vector, torch.full_like(relevance_vector, -torch.inf)
            )
            kept = _first_in_order(ranked.argsort(descending=True, stable=True), size, max_neurons)
        lower = kept.nonzero().flatten()
        return lower, torch.cartesian_prod(lower, upper_neurons).reshape(-1, 2)
    chosen = _most_relevant(relevance_matrix, percentile, branching)
    kept = chosen.any(0)
    if max_neurons is not None and int(kept.sum()) > max_neurons:
        choices = chosen.sum(0)
        chosen_weight = torch.where(chosen, relevance_matrix, torch.zeros_like(relevance_matrix))
        # stable sorts from the least to the most significant key: index, weight, count
        order = chosen_weight.sum(0).argsort(descending=True, stable=True)
        order = order[choices[order].argsort(descending=True, stable=True)]
        kept = _first_in_order(order, size, max_neurons) & kept
        chosen = chosen & kept
    pairs = chosen.T.nonzero()
    return kept.nonzero().flatten(), torch.stack([pairs[:, 0], upper_neurons[pairs[:, 1]]], 1)
