"""Step-wise sensitivity analysis, SSA (METHODS.md §3).

The four Steps are the four functions :func:`relevance_tensor` (I),
:func:`aggregate_datapoints` (II), :func:`aggregate_upper_neurons` (III) and
:func:`threshold` (IV); :class:`StepwiseSensitivity` runs them from the top
layer down and assembles the :class:`DependencyGraph`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Optional, Union

import torch
from captum.attr import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor
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
    run_and_capture,
    unique_layer_names,
)
from captum_ssa._utils.jacobian import DEFAULT_JACOBIAN_ELEMENTS
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.relevance import LayerPair, RelevanceFunction, resolve_relevance
from captum_ssa._utils.segment import is_weighted_layer, observe_layer_calls
from captum_ssa._utils.validation import prepare_inputs

_AGGREGATIONS = ("mean", "tukey")
_MODES = ("global", "local")
# A target: one neuron, a set of neurons, or one neuron per example.
StartingNeurons = Union[int, list[int], tuple[int, ...], Tensor]


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
    every value above the ``percentile``, always including the maximum."""
    if branching is not None:
        order = values.argsort(dim=-1, descending=True, stable=True)
        mask = torch.zeros_like(values, dtype=torch.bool)
        return mask.scatter(-1, order[..., :branching], True)
    (cut,) = quantiles(values, torch.tensor([percentile / 100.0]))
    # a constant row has nothing strictly above its percentile: keep its maximum
    return (values > cut) | (values == values.max(-1, keepdim=True).values)


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
    vector with nothing strictly above its percentile keeps its maximum.

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


def _starting_neurons(
    target: Optional[StartingNeurons],
    top_neurons: Optional[StartingNeurons],
    top_output: Tensor,
    model_output: Any,
    top_name: str,
) -> tuple[Tensor, Optional[Tensor]]:
    """The starting set S_L, and per upper neuron which examples count (or None)."""
    if target is not None and top_neurons is not None:
        raise ValueError("give target or top_neurons, not both")
    if target is not None and (
        not isinstance(model_output, Tensor) or model_output.shape != top_output.shape
    ):
        shape = tuple(model_output.shape) if isinstance(model_output, Tensor) else None
        raise ValueError(
            f"target picks outputs of the model, but the top layer {top_name!r} "
            f"(output {tuple(top_output.shape)}) is not the model's output ({shape}); "
            "pass top_neurons to pick neurons of the top layer"
        )
    selector = target if target is not None else top_neurons
    argument = "target" if target is not None else "top_neurons"
    batch_size, size = top_output.shape[0], top_output.shape[1]
    if selector is None:
        return torch.arange(size), None
    per_example = isinstance(selector, Tensor) and selector.dim() == 1
    if isinstance(selector, Tensor) and per_example and len(selector) != batch_size:
        raise ValueError(
            f"a 1-D tensor {argument} gives one neuron per example: it needs "
            f"{batch_size} entries, got {len(selector)}; pass a list for a set of neurons"
        )
    values = torch.as_tensor(selector).reshape(-1)
    if values.is_floating_point() or values.dtype == torch.bool or values.numel() == 0:
        raise TypeError(
            f"{argument} must be an int, a non-empty list of ints or a 1-D integer "
            f"tensor with one entry per example, got {selector!r}"
        )
    values = values.long().cpu()
    outside = values[(values < 0) | (values >= size)]
    if len(outside):
        raise ValueError(
            f"{argument} {outside.unique().tolist()} out of range: the top layer "
            f"{top_name!r} has {size} neurons (0 to {size - 1})"
        )
    neurons = values.unique()
    if not per_example:
        return neurons, None
    return neurons, neurons[:, None] == values[None, :]


def _graph_target(target: Optional[StartingNeurons]) -> Optional[Union[int, list[int]]]:
    """The class(es) a graph is built for: an int, or the sorted distinct targets."""
    if target is None:
        return None
    values = torch.as_tensor(target)
    if values.dim() == 0:
        return int(values)
    return sorted(set(values.reshape(-1).tolist()))


def _check_forward_order(order: list[int], names: list[str]) -> None:
    if order != sorted(order):
        ran = [names[position] for position in order]
        raise ValueError(
            f"layers must be listed in the order the forward pass runs them, lowest "
            f"first: got {names}, but the model runs them as {ran}"
        )


def _check_count(name: str, value: Optional[int]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


class StepwiseSensitivity(LayerAttribution, GradientAttribution):
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

    A neuron is one position along dim 1 of a layer output: a Linear unit or
    a conv channel, whose activity is the spatial mean of its map. Layers
    between two listed layers (pooling, activations, residual paths) are
    differentiated through.

    Cost: one forward pass per call; for each layer pair one backward pass per
    selected upper neuron through the segment between the two layers only,
    seeded below the upper layer when it is a plain Linear/Conv.

    Paper: Dimanov & Jamnik, *Step-wise sensitivity analysis: identifying
    partially distributed representations for interpretable deep learning*,
    ``shared/papers/stepwise-sensitivity-analysis.md``.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layers: list[Module],
        device_ids: Optional[list[int]] = None,
    ) -> None:
        r"""
        Args:
            forward_func (Callable): The model, or any function of the inputs
                        that runs it.
            layers (list[torch.nn.Module]): The layers to analyse, in the
                        order the forward pass runs them, lowest first; the
                        last is usually the logits layer. At least two.
            device_ids (list[int], optional): Passed on to Captum for
                        ``DataParallel`` models. Default: None
        """
        if not isinstance(layers, (list, tuple)) or len(layers) < 2:
            raise ValueError(
                "StepwiseSensitivity needs a list of at least two layers, lowest first"
            )
        layers = list(layers)
        check_layers_in_model(forward_func, layers)
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("a layer is listed twice; list each layer once")
        LayerAttribution.__init__(self, forward_func, layers, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.layers: list[Module] = layers
        self.layer_names = unique_layer_names(model_of(forward_func), layers)

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: Optional[StartingNeurons] = None,
        additional_forward_args: Any = None,
        relevance: Any = "gradient",
        absolute: bool = True,
        aggregation: str = "mean",
        mode: str = "global",
        percentile: float = 50,
        branching: Optional[int] = None,
        max_neurons: Optional[int] = None,
        top_neurons: Optional[StartingNeurons] = None,
        chunk_size: Optional[int] = None,
        show_progress: bool = False,
    ) -> DependencyGraph:
        r"""
        The dependency graph of the starting neurons over ``inputs``.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): The examples the graph is
                        built from; dimension 0 is the batch. A class-specific
                        graph uses the examples of one class (see
                        :meth:`class_graphs`).
            target (int, list[int] or Tensor, optional): The starting neurons
                        of the top layer, which must be the model's output
                        (e.g. the logits): an int, a list of ints (a set: every
                        example counts for each), or a 1-D tensor with one
                        entry per example (each neuron then aggregates over the
                        examples that name it in Step II). Default: None, every
                        neuron of the top layer.
            additional_forward_args (Any, optional): Extra arguments passed to
                        ``forward_func`` after the inputs. Default: None
            relevance (str, Attribution or Callable, optional): Step I's
                        relevance function: ``"gradient"``, ``"activation"``,
                        ``"gradient_x_activation"``, ``"weight"`` or
                        ``"weight_activation"`` (see METHODS.md §3; the weight
                        ones need each upper layer to be a Linear/Conv reading
                        the lower layer's output directly); a Captum layer
                        attribution class or instance (e.g.
                        :class:`captum.attr.LayerIntegratedGradients`, see
                        ``CaptumRelevance``); or a callable
                        ``(pair, upper_neurons, absolute) -> (M, N, K) tensor``.
                        Default: ``"gradient"``
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
                        each row) unless ``branching`` is given. Default: 50
            branching (int, optional): Keep the top ``branching`` neurons (per
                        upper neuron in local mode) instead. Default: None
            max_neurons (int, optional): At most this many neurons per lower
                        layer (local mode: the most often chosen, then by
                        summed weight; global: by relevance). Default: None
            top_neurons (int, list[int] or Tensor, optional): Like ``target``,
                        for a top layer that is not the model's output.
                        Default: None
            chunk_size (int, optional): Upper neurons whose relevance rows
                        (``N x K`` each) are computed and aggregated together;
                        bounds memory. Default: a chunk of at most
                        :math:`2^{24}` relevance entries.
            show_progress (bool, optional): Show a progress bar per layer
                        pair. Default: False

        Returns:
            *DependencyGraph* of the kept neurons of every layer (the top
            layer's are the starting neurons), the Step II matrices, the
            Step III relevance of every neuron, and the edges.

        Examples::

            >>> net = CifarNet().eval()
            >>> ssa = StepwiseSensitivity(net, [net.conv1, net.conv2, net.fc1,
            ...                                 net.fc2, net.fc3])
            >>> graph = ssa.attribute(x_cats, target=3)            # global, 50th pct
            >>> graph.neurons("fc2")
            >>> local = ssa.attribute(x_cats, target=3, mode="local",
            ...                       branching=8, max_neurons=8)
        """
        relevance_function, relevance_name = resolve_relevance(relevance)
        if aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if isinstance(percentile, bool) or not 0 <= percentile <= 100:
            raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
        for name, value in (
            ("branching", branching),
            ("max_neurons", max_neurons),
            ("chunk_size", chunk_size),
        ):
            _check_count(name, value)
        prepared = prepare_inputs(inputs)
        # The seed below a layer stands for the layer's own weights: only valid when
        # no hook of the user's changes what the layer outputs.
        keep_input = [
            position > 0
            and is_weighted_layer(layer)
            and not (layer._forward_hooks or layer._forward_pre_hooks)
            for position, layer in enumerate(self.layers)
        ]
        with untouched_model(self.forward_func):
            with observe_layer_calls(self.layers, keep_input) as calls:
                model_output, outputs = run_and_capture(
                    self.forward_func, prepared, self.layers, additional_forward_args
                )
            _check_forward_order(calls.order, self.layer_names)
            upper_neurons, datapoints = _starting_neurons(
                target, top_neurons, outputs[-1], model_output, self.layer_names[-1]
            )
            top_relevance = torch.zeros(outputs[-1].shape[1], dtype=outputs[-1].dtype)
            top_relevance[upper_neurons] = 1.0
            neurons, relevances = [upper_neurons], [top_relevance]
            matrices: list[Tensor] = []
            edges: list[Tensor] = []
            for upper in range(len(self.layers) - 1, 0, -1):
                pair = LayerPair(
                    lower_name=self.layer_names[upper - 1],
                    upper_name=self.layer_names[upper],
                    lower_layer=self.layers[upper - 1],
                    upper_layer=self.layers[upper],
                    lower_output=outputs[upper - 1],
                    upper_output=outputs[upper],
                    upper_input=calls.inputs.get(upper),
                    forward_func=self.forward_func,
                    inputs=prepared,
                    additional_forward_args=additional_forward_args,
                )
                matrix = self._relevance_matrix(
                    pair,
                    upper_neurons,
                    datapoints,
                    relevance_function,
                    absolute,
                    aggregation,
                    chunk_size,
                    show_progress,
                )
                vector = aggregate_upper_neurons(matrix)
                upper_neurons, pair_edges = threshold(
                    matrix, vector, upper_neurons, mode, percentile, branching, max_neurons
                )
                datapoints = None
                neurons.insert(0, upper_neurons)
                relevances.insert(0, vector)
                matrices.insert(0, matrix)
                edges.insert(0, pair_edges)
        return DependencyGraph(
            self.layer_names,
            self.layers,
            neurons,
            relevances,
            matrices,
            edges,
            target=_graph_target(target),
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
        chunk_size: Optional[int],
        show_progress: bool,
    ) -> Tensor:
        """Steps I and II over chunks of upper neurons: the (M, K) matrix, on CPU."""
        batch_size, lower_size = pair.lower_output.shape[:2]
        if chunk_size is None:
            chunk_size = max(1, DEFAULT_JACOBIAN_ELEMENTS // (batch_size * lower_size))
        rows = []
        for start, stop in progress(
            list(_chunks(upper_neurons, chunk_size)),
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
        classes: Optional[list[int]] = None,
        **attribute_kwargs: Any,
    ) -> dict[int, DependencyGraph]:
        r"""
        One class-specific dependency graph per class.

        Each graph is :meth:`attribute` on that class's own examples with the
        class as ``target`` (the paper's class-specific graphs).

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Examples of all classes;
                        dimension 0 is the batch.
            labels (Tensor or Sequence[int]): The class of each example (true
                        labels, or the model's predictions), one per example.
            classes (list[int], optional): The classes to build graphs for.
                        Default: every class present in ``labels``, sorted.
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
            members = (labels == label).nonzero().flatten()
            if len(members) == 0:
                raise ValueError(f"class {label} has no examples among the labels")
            subset = tuple(t.detach()[members.to(t.device)] for t in formatted)
            graphs[int(label)] = self.attribute(
                subset if _is_tuple(inputs) else subset[0], target=int(label), **attribute_kwargs
            )
        return graphs
