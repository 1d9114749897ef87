"""Step-wise sensitivity analysis, SSA.

The four Steps are the four functions :func:`relevance_tensor` (I),
:func:`aggregate_datapoints` (II), :func:`aggregate_upper_neurons` (III) and
:func:`threshold` (IV); :class:`StepwiseSensitivity` runs them from the top
layer down and assembles the :class:`DependencyGraph`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor, nn
from torch.nn import Module

from captum_ssa._core.dependency_graph import DependencyGraph
from captum_ssa._utils._compat import (
    TensorOrTupleOfTensorsGeneric,
    _is_tuple,
    progress,
)
from captum_ssa._utils.hooks import (
    check_layers_in_model,
    model_of,
    neuron_axis,
    run_and_capture,
    unique_layer_names,
)
from captum_ssa._utils.jacobian import DEFAULT_JACOBIAN_ELEMENTS
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.relevance import (
    PRESETS,
    LayerPair,
    RelevanceFunction,
    resolve_relevance,
)
from captum_ssa._utils.segment import (
    depends_on,
    is_weighted_layer,
    observe_layer_calls,
    record_weighted_calls,
)
from captum_ssa._utils.validation import positive_int, prepare_inputs

_AGGREGATIONS = ("mean", "tukey")
_MODES = ("global", "local")
# Captum's target: one class for every example, or one class per example.
Target = Union[int, tuple[int, ...], list[int], Tensor, np.ndarray]
# A set of starting neurons of the top layer.
NeuronSet = Union[int, Sequence[int], set[int], Tensor, np.ndarray]
# Modules whose 3-D outputs are (N, channels, length): dim 1 holds their neurons.
_CHANNEL_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


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
                    ``captum_ssa._utils.relevance``), e.g. ``relevance.gradient``.
        absolute (bool, optional): Take absolute values (before spatial means).
                    Default: True

    Returns:
        *Tensor* :math:`\omega` shaped ``(len(upper_neurons), N, K)``:
        :math:`\omega[j, i, k]` is the relevance of lower neuron ``k`` to upper
        neuron ``upper_neurons[j]`` on example ``i``.

    Raises:
        ValueError: when the relevance function returns the wrong shape, or
                    NaN or infinite values (e.g. after an overflow).

    Examples::

        >>> from captum_ssa._utils import relevance
        >>> omega = relevance_tensor(pair, torch.tensor([3]), relevance.gradient)
    """
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
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    values = relevance_tensor
    if aggregation == "tukey":
        first, third = quantiles(values, torch.tensor([0.25, 0.75]))
        values = (values > third + 1.5 * (third - first)).to(relevance_tensor.dtype)
    if datapoints is None:
        return values.mean(1)
    counted = datapoints.to(values.device)[..., None]
    total = torch.where(counted, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return total.sum(1) / counted.sum(1).clamp(min=1)


# ---------------------------------------------------------------- Step III


def aggregate_upper_neurons(relevance_matrix: Tensor) -> Tensor:
    r"""
    Step III: the relevance vector :math:`r[k] = \mathrm{mean}_n\, \omega[n, k]`.

    Args:
        relevance_matrix (Tensor): :math:`\omega[n, k]` shaped ``(M, K)`` (Step II).

    Returns:
        *Tensor* shaped ``(K,)``: how much each lower neuron matters to the
        upper set as a whole.

    Examples::

        >>> aggregate_upper_neurons(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
        tensor([2., 1.])
    """
    return relevance_matrix.mean(0)


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


# ---------------------------------------------------------------- the method


def _chunks(neurons: Tensor, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, len(neurons), size):
        yield start, min(start + size, len(neurons))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _integer_tensor(values: Any, argument: str, expected: str) -> Tensor:
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


def _tuple_target_message(target: Any, top_shape: tuple[int, ...], axis: int) -> str:
    return (
        f"target {target!r} holds a tuple, which in Captum names one element of a "
        "multi-dimensional output, not a neuron. SSA's neurons are the positions along "
        f"the neuron axis, dim {axis} of the top layer's output {top_shape} (see "
        "neuron_dim); pass an int, or one int per example"
    )


def _target_neurons(
    target: Any, batch_size: int, top_shape: tuple[int, ...], axis: int
) -> tuple[Tensor, bool]:
    """Captum's ``target`` as neuron indices, and whether there is one per example."""
    if isinstance(target, tuple):
        if len(top_shape) == 2 and len(target) == 1 and _is_integer(target[0]):
            return torch.tensor([int(target[0])]), False  # Captum's index (k,) of (N, C)
        raise ValueError(_tuple_target_message(target, top_shape, axis))
    if _is_integer(target):
        return torch.tensor([int(target)]), False
    if isinstance(target, list):
        if any(isinstance(entry, tuple) for entry in target):
            raise ValueError(_tuple_target_message(target, top_shape, axis))
        if len(target) != batch_size:
            raise ValueError(
                "a list target gives one class per example (Captum's convention): it needs "
                f"{batch_size} entries, got {len(target)}; for a set of starting neurons "
                "pass top_neurons=[...]"
            )
    values = _integer_tensor(
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


def _neuron_set(top_neurons: Any) -> Tensor:
    """``top_neurons`` as a 1-D tensor of neuron indices (a set: order and repeats ignored)."""
    if _is_integer(top_neurons):
        return torch.tensor([int(top_neurons)])
    values = list(top_neurons) if isinstance(top_neurons, (set, frozenset)) else top_neurons
    indices = _integer_tensor(
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


def _starting_neurons(
    target: Optional[Target],
    top_neurons: Optional[NeuronSet],
    top_output: Tensor,
    top_shape: tuple[int, ...],
    axis: int,
    model_output: Any,
    top_name: str,
) -> tuple[Tensor, Optional[Tensor]]:
    """The starting set S_L, and per upper neuron which examples count (or None).

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
        if not isinstance(model_output, Tensor) or tuple(model_output.shape) != top_shape:
            shape = tuple(model_output.shape) if isinstance(model_output, Tensor) else None
            raise ValueError(
                f"target picks outputs of the model, but the top layer {top_name!r} "
                f"(output {top_shape}) is not the model's output ({shape}); "
                "pass top_neurons to pick neurons of the top layer"
            )
        values, per_example = _target_neurons(target, batch_size, top_shape, axis)
        argument = "target"
    else:
        values, per_example = _neuron_set(top_neurons), False
        argument = "top_neurons"
    outside = values[(values < 0) | (values >= size)]
    if len(outside):
        raise ValueError(
            f"{argument} {outside.unique().tolist()} out of range: the top layer "
            f"{top_name!r} has {size} neurons (0 to {size - 1}) along dim {axis}"
        )
    neurons = values.unique()
    if not per_example:
        return neurons, None
    return neurons, neurons[:, None] == values[None, :]


def _check_forward_order(order: list[int], names: list[str], layers: list[Module]) -> None:
    if order != sorted(order):
        ran = [names[position] for position in order]
        nested = [
            (names[outer], names[inner])
            for outer, container in enumerate(layers)
            for inner, layer in enumerate(layers)
            if outer != inner and any(module is layer for module in container.modules())
        ]
        hint = "".join(
            f"; {outer!r} contains {inner!r}, so it starts running first: list layers along "
            "one path of the computation, not a block and a module inside it"
            for outer, inner in nested[:1]
        )
        raise ValueError(
            f"layers must be listed in the order the forward pass runs them, lowest "
            f"first: got {names}, but the model runs them as {ran}{hint}"
        )


def _check_dependencies(outputs: list[Tensor], names: list[str]) -> None:
    """Each listed layer must be computed from the one listed below it."""
    for upper in range(len(outputs) - 1, 0, -1):
        if not depends_on(outputs[upper], outputs[upper - 1]):
            raise ValueError(
                f"the output of {names[upper]!r} does not depend on the output of "
                f"{names[upper - 1]!r} (one is a module inside the other, or they lie on "
                "parallel branches), so every relevance between them would be zero; list "
                "layers along one path of the computation, each computed from the one "
                "listed before it"
            )


def _sequence_axis_layers(
    forward_func: Callable[..., Any],
    layers: list[Module],
    names: list[str],
    outputs: list[Tensor],
) -> list[str]:
    """Listed layers whose 3-D output is probably (N, sequence, features)."""
    model = model_of(forward_func)
    modules = list(model.modules()) if model is not None else layers
    has_convolution = any(isinstance(module, nn.modules.conv._ConvNd) for module in modules)
    suspects = []
    for layer, name, output in zip(layers, names, outputs):
        if output.dim() != 3 or isinstance(layer, _CHANNEL_FIRST):
            continue
        # an activation after a Conv1d is (N, C, L) too; only a conv-free model tells
        parameter_free = next(layer.parameters(), None) is None
        if not (parameter_free and has_convolution):
            suspects.append(name)
    return suspects


class StepwiseSensitivity(Attribution):
    r"""
    Step-wise sensitivity analysis (SSA): the dependency graph of a decision.

    Starting from neurons of the top layer (e.g. the target class), SSA walks
    down an ordered list of layers. For each pair of consecutive layers it
    (I) scores how relevant every lower neuron is to each selected upper
    neuron on each example, by default
    :math:`\omega[n, i, k] = \mathrm{mean}_p |\partial a_n(x_i) / \partial a_{k,p}(x_i)|`;
    (II) aggregates over the examples (mean, or Tukey outlier frequency);
    (III) averages over the upper neurons; and (IV) keeps the relevant lower
    neurons, globally (above a percentile, or the top ``branching``) or
    locally (the top ``branching`` of each upper neuron). The kept neurons of
    every layer and the links between them form a :class:`DependencyGraph`.

    A neuron is one position along the neuron axis of a layer output, dim 1
    unless ``neuron_dim`` says otherwise: a Linear unit or a conv channel,
    whose activity is the mean of its map over the remaining axes. Layers
    between two listed layers (pooling, activations, residual paths) are
    differentiated through; each listed layer must be computed from the one
    listed below it.

    The result is a graph, not attributions shaped like a layer or the
    inputs, so this is a plain :class:`captum.attr.Attribution` (usable where
    Captum expects one) and not a ``LayerAttribution`` or
    ``GradientAttribution``: it promises neither layer-shaped tensors nor a
    convergence delta (``has_convergence_delta()`` is False).

    Cost: one forward pass per call; for each layer pair one backward pass per
    selected upper neuron through the segment between the two layers only,
    seeded below the upper layer when it is a plain Linear/Conv.

    Paper: Botty Dimanov and Mateja Jamnik, *Step-wise Sensitivity Analysis:
    Identifying Partially Distributed Representations for Interpretable Deep
    Learning*, 2018 (OpenReview SyeBqsRctm).
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: list[Module],
        neuron_dim: Optional[int] = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or any function of the inputs
                        that runs it.
            layers (list[torch.nn.Module]): The layers to analyse, in the
                        order the forward pass runs them, lowest first, each
                        computed from the one before (along one path of the
                        computation); the last is usually the logits layer. At
                        least two.
            neuron_dim (int, optional): The axis of every listed layer's
                        output that holds its neurons; the others are averaged
                        over. Use ``-1`` for the features of a token sequence
                        (N, T, F), e.g. the Linear, attention and LayerNorm
                        layers of a transformer; a 2-D output (N, C) has its
                        neurons along dim 1 = -1 either way. Default: None,
                        dim 1 (with a warning for 3-D outputs of layers that
                        are not convolutions, whose dim 1 is probably a
                        sequence axis; ``neuron_dim=1`` silences it).
        """
        if not isinstance(layers, (list, tuple)) or len(layers) < 2:
            raise ValueError(
                "StepwiseSensitivity needs a list of at least two layers, lowest first"
            )
        if neuron_dim is not None and (not _is_integer(neuron_dim) or neuron_dim == 0):
            raise ValueError(
                "neuron_dim must be None (dim 1) or a non-zero int naming the neuron axis of "
                f"the layer outputs (dim 0 is the batch), got {neuron_dim!r}"
            )
        layers = list(layers)
        check_layers_in_model(forward_func, layers)
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("a layer is listed twice; list each layer once")
        Attribution.__init__(self, forward_func)
        self.layers: list[Module] = layers
        self.layer_names = unique_layer_names(model_of(forward_func), layers)
        self.neuron_dim: Optional[int] = None if neuron_dim is None else int(neuron_dim)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: Optional[Target] = None,
        additional_forward_args: Any = None,
        relevance: Any = "gradient",
        absolute: bool = True,
        aggregation: str = "mean",
        mode: str = "global",
        percentile: float = 50,
        branching: Optional[int] = None,
        max_neurons: Optional[int] = None,
        top_neurons: Optional[NeuronSet] = None,
        upper_neurons_per_chunk: Optional[int] = None,
        show_progress: bool = False,
    ) -> DependencyGraph:
        r"""
        The dependency graph of the starting neurons over ``inputs``.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): The examples the graph is
                        built from; dimension 0 is the batch. A class-specific
                        graph uses the examples of one class (see
                        :meth:`class_graphs`).
            target (int, tuple, list[int], Tensor or numpy.ndarray, optional):
                        Captum's target, for a top layer that is the model's
                        output (e.g. the logits): an int (one starting neuron,
                        for every example), or one int per example as a list,
                        1-D tensor or array with ``N`` entries (the starting
                        neurons are the distinct targets, and each aggregates
                        in Step II over the examples that name it). A 1-tuple
                        ``(k,)`` is neuron ``k`` of a 2-D output; other tuples,
                        which in Captum name one element of a multi-dimensional
                        output, are an error. For a set of neurons use
                        ``top_neurons``. Default: None
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            relevance (str, Attribution or Callable, optional): Step I's
                        relevance function: ``"gradient"``, ``"activation"``,
                        ``"gradient_x_activation"``, ``"weight"`` or
                        ``"weight_activation"``; the paper's four strategies,
                        with the absolute value where the paper puts it:
                        ``"weight_abs"`` ("the absolute value of the
                        weights", :math:`|W[n, k]|`), ``"activations_abs"``
                        ("the absolute average activation of a neuron over
                        the target data", :math:`|\mathrm{mean}_i a_k(x_i)|`,
                        not the mean of :math:`|a_k|`), ``"weight_act_abs"``
                        (:math:`|W[n, k]|` times that) and ``"gradients"``
                        ("the absolute gradient values ... averaged across the
                        target data", :math:`\mathrm{mean}_i |\partial a_n /
                        \partial a_k|`); a Captum layer attribution class or
                        instance (e.g.
                        :class:`captum.attr.LayerIntegratedGradients`, see
                        ``CaptumRelevance``); or a callable
                        ``(pair, upper_neurons, absolute) -> (M, N, K) tensor``
                        (see :class:`LayerPair`). The weight-based ones use
                        the one Linear/Conv between two listed layers, which
                        may be activation modules (a ReLU, or the pooling
                        after it, as the paper ranks activations) with only
                        element-wise operations, pooling and reshapes around
                        it; elsewhere they raise a ValueError. The two whose
                        absolute value comes after the mean over the data
                        (``"activations_abs"``, ``"weight_act_abs"``) need
                        ``aggregation="mean"``; the presets take no
                        ``absolute=False``. Default: ``"gradient"``
            absolute (bool, optional): Absolute relevances (taken before the
                        spatial mean); False gives the signed variants.
                        Default: True
            aggregation (str, optional): Step II: ``"mean"`` or ``"tukey"``.
                        Default: ``"mean"``
            mode (str, optional): ``"global"`` (one ranking per layer, edges
                        between all kept neurons of consecutive layers) or
                        ``"local"`` (each upper neuron keeps its own top
                        lower neurons; edges are those choices).
                        Default: ``"global"``
            percentile (float, optional): Step IV keeps neurons above this
                        percentile (of the relevance vector; in local mode of
                        each row) unless ``branching`` is given; 0 keeps every
                        neuron. A vector or row that is all zero keeps none
                        (a layer left empty warns, and the layers below it
                        are empty too). Default: 50
            branching (int, optional): Keep the top ``branching`` neurons (per
                        upper neuron in local mode) instead. Default: None
            max_neurons (int, optional): At most this many neurons per lower
                        layer (local mode: the most often chosen, then by
                        summed weight; global: by relevance). Default: None
            top_neurons (int or collection of ints, optional): A set of
                        starting neurons of the top layer, any layer (the
                        model's output included): an int, or a list, tuple,
                        set, 1-D tensor or array of neuron indices; every
                        example counts for each. Default: None; with neither
                        ``target`` nor ``top_neurons``, every neuron of the
                        top layer.
            upper_neurons_per_chunk (int, optional): Upper neurons whose
                        relevance rows (``N x K`` each) are computed and
                        aggregated together; bounds memory. Default: as many
                        as fit in :math:`2^{24}` relevance entries.
            show_progress (bool, optional): Show a progress bar per layer
                        pair. Default: False

        Returns:
            *DependencyGraph* of the kept neurons of every layer (the top
            layer's are the starting neurons), the Step II matrices, the
            Step III relevance of every neuron, and the edges; its ``target``
            is the int target, or the sorted distinct per-example targets.

        Raises:
            ValueError: for a listed layer not computed from the one below it,
                        and for relevances that come out NaN or infinite
                        (overflow), naming the layer pair.

        Examples::

            >>> net = CifarNet().eval()
            >>> ssa = StepwiseSensitivity(net, [net.conv1, net.conv2, net.fc1,
            ...                                 net.fc2, net.fc3])
            >>> graph = ssa.attribute(x_cats, target=3)            # global, 50th pct
            >>> graph.neurons("fc2")
            >>> local = ssa.attribute(x_cats, target=3, mode="local",
            ...                       branching=8, max_neurons=8)
            >>> pets = ssa.attribute(x_pets, top_neurons=[3, 5])   # a set of classes
            >>> mixed = ssa.attribute(x, target=y)                 # one class per example
        """
        relevance_function, relevance_name = resolve_relevance(relevance)
        if aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
        if relevance_function in PRESETS.values() and not absolute:
            raise ValueError(
                f"relevance={relevance_name!r} is one of the paper's strategies, which fix "
                "where the absolute value goes; absolute=False applies to 'gradient', "
                "'activation', 'gradient_x_activation', 'weight' and 'weight_activation'"
            )
        absolute_of_mean = getattr(relevance_function, "absolute_after_aggregation", False)
        if absolute_of_mean and aggregation != "mean":
            raise ValueError(
                f"relevance={relevance_name!r} is the absolute value of the mean over the "
                f"data, so it needs aggregation='mean', not {aggregation!r}; for Tukey "
                "outliers use 'activation' or 'weight_activation' (absolute per example)"
            )
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if isinstance(percentile, bool) or not 0 <= percentile <= 100:
            raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
        branching = positive_int("branching", branching)
        max_neurons = positive_int("max_neurons", max_neurons)
        upper_neurons_per_chunk = positive_int("upper_neurons_per_chunk", upper_neurons_per_chunk)
        prepared = prepare_inputs(inputs)
        # The seed below a layer stands for the layer's own weights: only valid when
        # no hook of the user's changes what the layer outputs.
        keep_input = [
            position > 0
            and is_weighted_layer(layer)
            and not (layer._forward_hooks or layer._forward_pre_hooks)
            for position, layer in enumerate(self.layers)
        ]
        model = model_of(self.forward_func)
        modules = list(model.modules()) if model is not None else self.layers
        with untouched_model(self.forward_func):
            # the weighted calls' hooks first, so that they see each module's own output
            with (
                record_weighted_calls(modules) as weighted_calls,
                observe_layer_calls(self.layers, keep_input) as calls,
            ):
                model_output, outputs = run_and_capture(
                    self.forward_func,
                    prepared,
                    self.layers,
                    additional_forward_args,
                    neuron_dim=self.neuron_dim,
                )
            _check_forward_order(calls.order, self.layer_names, self.layers)
            axes = [
                neuron_axis(self.neuron_dim, output.dim(), name)
                for output, name in zip(outputs, self.layer_names)
            ]
            if self.neuron_dim is None:
                suspects = _sequence_axis_layers(
                    self.forward_func, self.layers, self.layer_names, outputs
                )
                if suspects:
                    warnings.warn(
                        f"SSA takes dim 1 of a layer output as its neuron axis, but "
                        f"{suspects} output 3-D tensors and are not convolutions: dim 1 is "
                        "probably a sequence (token) axis there. Pass neuron_dim=-1 to "
                        "StepwiseSensitivity for the features, or neuron_dim=1 to keep "
                        "dim 1 and silence this warning.",
                        stacklevel=3,
                    )
            _check_dependencies(outputs, self.layer_names)
            top_shape = tuple(outputs[-1].movedim(1, axes[-1]).shape)
            upper_neurons, datapoints = _starting_neurons(
                target,
                top_neurons,
                outputs[-1],
                top_shape,
                axes[-1],
                model_output,
                self.layer_names[-1],
            )
            graph_target: Optional[Union[int, list[int]]] = None
            if target is not None:
                graph_target = (
                    upper_neurons.tolist() if datapoints is not None else int(upper_neurons[0])
                )
            top_relevance = torch.zeros(outputs[-1].shape[1], dtype=outputs[-1].dtype)
            top_relevance[upper_neurons] = 1.0
            neurons, relevances = [upper_neurons], [top_relevance]
            matrices: list[Tensor] = []
            edges: list[Tensor] = []
            empty: list[str] = []
            for upper in range(len(self.layers) - 1, 0, -1):
                pair = LayerPair(
                    lower_name=self.layer_names[upper - 1],
                    upper_name=self.layer_names[upper],
                    lower_layer=self.layers[upper - 1],
                    upper_layer=self.layers[upper],
                    lower_output=outputs[upper - 1],
                    upper_output=outputs[upper],
                    # the seed below the upper layer assumes its neurons along dim 1
                    upper_input=calls.inputs.get(upper) if axes[upper] == 1 else None,
                    forward_func=self.forward_func,
                    inputs=prepared,
                    additional_forward_args=additional_forward_args,
                    neuron_dim=self.neuron_dim,
                    weighted_calls=weighted_calls,
                )
                matrix = self._relevance_matrix(
                    pair,
                    upper_neurons,
                    datapoints,
                    relevance_function,
                    absolute,
                    aggregation,
                    upper_neurons_per_chunk,
                    show_progress,
                )
                if absolute_of_mean:
                    matrix = matrix.abs()
                if len(upper_neurons):
                    vector = aggregate_upper_neurons(matrix)
                    upper_neurons, pair_edges = threshold(
                        matrix, vector, upper_neurons, mode, percentile, branching, max_neurons
                    )
                    if not len(upper_neurons):
                        empty.append(pair.lower_name)
                else:  # nothing is kept above, so nothing here is relevant to it
                    vector = matrix.new_zeros(matrix.shape[1])
                    pair_edges = torch.zeros(0, 2, dtype=torch.long)
                datapoints = None
                neurons.insert(0, upper_neurons)
                relevances.insert(0, vector)
                matrices.insert(0, matrix)
                edges.insert(0, pair_edges)
        if empty:
            warnings.warn(
                f"no neuron of {empty[0]!r} is relevant: its relevance to the neurons kept "
                "above is zero everywhere, so the graph keeps no neuron there, nor in the "
                "layers below it. List layers that the kept neurons depend on, or pass "
                "branching to keep a number of neurons regardless.",
                stacklevel=3,
            )
        return DependencyGraph(
            self.layer_names,
            self.layers,
            neurons,
            relevances,
            matrices,
            edges,
            target=graph_target,
            metadata={
                "method": type(self).__name__,
                "relevance": relevance_name,
                "absolute": absolute,
                "aggregation": aggregation,
                "mode": mode,
                "percentile": percentile,
                "branching": branching,
                "max_neurons": max_neurons,
                "num_examples": prepared[0].shape[0],
                "neuron_dim": self.neuron_dim,
            },
        )

    def _relevance_matrix(
        self,
        pair: LayerPair,
        upper_neurons: Tensor,
        datapoints: Optional[Tensor],
        relevance: RelevanceFunction,
        absolute: bool,
        aggregation: str,
        upper_neurons_per_chunk: Optional[int],
        show_progress: bool,
    ) -> Tensor:
        """Steps I and II over chunks of upper neurons: the (M, K) matrix, on CPU."""
        batch_size, lower_size = pair.lower_output.shape[:2]
        if not len(upper_neurons):
            return torch.zeros(0, lower_size, dtype=pair.lower_output.dtype)
        chunk = upper_neurons_per_chunk
        if chunk is None:
            chunk = max(1, DEFAULT_JACOBIAN_ELEMENTS // (batch_size * lower_size))
        rows = []
        for start, stop in progress(
            list(_chunks(upper_neurons, chunk)),
            desc=f"SSA {pair.upper_name} -> {pair.lower_name}",
            disable=not show_progress,
        ):
            omega = relevance_tensor(pair, upper_neurons[start:stop], relevance, absolute)
            chunk_datapoints = None if datapoints is None else datapoints[start:stop]
            rows.append(aggregate_datapoints(omega, aggregation, chunk_datapoints).detach().cpu())
        return torch.cat(rows)

    def class_graphs(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        labels: Any,
        classes: Optional[Sequence[int]] = None,
        **attribute_kwargs: Any,
    ) -> dict[int, DependencyGraph]:
        r"""
        One class-specific dependency graph per class.

        Each graph is :meth:`attribute` on that class's own examples with the
        class as an int ``target`` (the paper's class-specific graphs), so the
        top layer must be the model's output.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Examples of all classes;
                        dimension 0 is the batch.
            labels (Tensor, numpy.ndarray or Sequence[int]): The class of each
                        example (true labels, or the model's predictions), one
                        per example.
            classes (Sequence[int], optional): The classes to build graphs
                        for. Default: every class present in ``labels``,
                        sorted.
            **attribute_kwargs: Any other :meth:`attribute` argument
                        (``relevance``, ``mode``, ``branching``, ...);
                        ``additional_forward_args`` are passed unchanged, so
                        they must not depend on the batch.

        Returns:
            *dict[int, DependencyGraph]*: the graph of each class.

        Examples::

            >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y, [3, 5])
            >>> graphs[3].neurons("fc1")
        """
        for reserved in ("target", "top_neurons"):
            if reserved in attribute_kwargs:
                raise TypeError(
                    f"class_graphs sets {reserved} itself (each class is its graph's "
                    "target); call attribute for other starting neurons"
                )
        formatted = prepare_inputs(inputs)
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.is_floating_point() or len(labels) != formatted[0].shape[0]:
            raise ValueError(
                f"labels must hold one integer class per example ({formatted[0].shape[0]}), "
                f"got {len(labels)} values of dtype {labels.dtype}"
            )
        labels = labels.cpu().long()
        wanted = sorted(labels.unique().tolist()) if classes is None else list(classes)
        graphs = {}
        for label in wanted:
            if not _is_integer(label):
                raise TypeError(f"classes must hold ints, got {label!r}")
            members = (labels == int(label)).nonzero().flatten()
            if len(members) == 0:
                raise ValueError(f"class {label} has no examples among the labels")
            subset = tuple(t.detach()[members.to(t.device)] for t in formatted)
            graphs[int(label)] = self.attribute(
                subset if _is_tuple(inputs) else subset[0], target=int(label), **attribute_kwargs
            )
        return graphs
