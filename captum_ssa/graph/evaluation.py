"""Measuring dependency graphs against the network (the uses of a graph in the SSA paper).

- a graph as a compressed classifier: the network with every hidden neuron
  outside the graph set to zero (:func:`evaluate_graph`), and the
  class-specific ensemble (:func:`ensemble_predict`);
- the same with labels, and what each class's predictions are worth
  (:func:`evaluate_ensemble`);
- the ablation gold standard (:func:`ablation_importance`) and its Spearman
  agreement with a relevance ranking (:func:`spearman_agreement`), the paper's
  Table 2.

The result records and the one-against-the-rest rates they report are in
:mod:`~captum_ssa.graph.rates` (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.batches import Batch, pieces
from captum_ssa._utils.distributed import all_reduce_sum, same_on_every_rank
from captum_ssa._utils.model_output import (
    ExplainedForward,
    OutputSelector,
    checked_output,
    output_tensor,
)
from captum_ssa._utils.model_state import warn_if_training
from captum_ssa._utils.validation import positive_int
from captum_ssa.graph.ablation import (
    ablation_layout,
    add_ablated_losses,
    metric_losses,
    neuron_count,
    resolve_layer,
)
from captum_ssa.graph.dependency_graph import DependencyGraph
from captum_ssa.graph.labelled_data import labelled_batches, unlabelled_batches
from captum_ssa.graph.rates import (
    RATE_COUNTS,
    ClassRates,
    EnsembleEvaluation,
    GraphEvaluation,
    class_rates,
    correct_counts,
    examples_in,
    rate_counts,
    rates_from_counts,
)

__all__ = [
    "ClassRates",
    "EnsembleEvaluation",
    "GraphEvaluation",
    "ablation_importance",
    "class_rates",
    "ensemble_predict",
    "evaluate_ensemble",
    "evaluate_graph",
    "spearman_agreement",
]

# Rows per forward pass when no batch size is given: small enough for any
# reasonable model's activations, large enough to keep the passes few.
_DEFAULT_BATCH_ROWS = 4096
_METRICS = ("accuracy", "loss")


def evaluate_graph(
    model: Module,
    graph: DependencyGraph,
    inputs: Any,
    labels: Optional[Tensor] = None,
    batch_size: Optional[int] = None,
    show_progress: bool = False,
    output: OutputSelector = None,
) -> GraphEvaluation:
    r"""
    The graph as a compressed classifier: run ``model`` with every neuron of
    the graph's hidden layers that is not in the graph set to zero
    (:meth:`DependencyGraph.mask`), and compare its predictions with the labels.

    For a class-specific graph (SSA on one class's inputs, starting from that
    class) the paper reports the true-positive rate on the class's own inputs
    next to the original network's accuracy, with about half the neurons kept.

    The data is read once, a batch at a time, and only counts are kept, so
    memory does not grow with the dataset. Under ``torch.distributed`` each
    rank passes its own shard and the counts are summed over the ranks: every
    rank gets the result over all the data.

    Args:
        model (torch.nn.Module): The classifier the graph was built on; its
                    output is ``(N, classes)`` scores.
        graph (DependencyGraph): The graph to evaluate.
        inputs (Tensor, tuple[Tensor, ...] or Iterable): The inputs,
                    dimension 0 the batch, with ``labels``; or, with
                    ``labels=None``, an iterable of ``(inputs, labels)``
                    batches such as a ``DataLoader`` over a
                    ``TensorDataset(x, y)``.
        labels (Tensor, optional): The ``(N,)`` true classes of tensor
                    ``inputs``. Default: None (the labels of each batch)
        batch_size (int, optional): Examples per forward pass, at most.
                    Default: each batch as given, up to 4096.
        show_progress (bool, optional): Show a progress bar over the batches.
                    Default: False
        output (str, int or Callable, optional): Which tensor of the model's
                    output holds the scores, for a model that returns a
                    ``ModelOutput``, a dict, a tuple or a namedtuple: a key or
                    attribute name, an index, or a callable
                    ``raw_output -> tensor``. Default: None (a tensor as it is,
                    else its ``logits``)

    Returns:
        *GraphEvaluation* with ``accuracy``, ``true_positive_rate``,
        ``kept_fraction``, ``model_accuracy``, and what the true-positive
        rate costs: ``precision``, ``false_positive_rate`` and
        ``predicted_fraction`` of the graph's class(es).

    Examples::

        >>> graph = StepwiseSensitivity(net, layers).attribute(x[y == 3], target=3)
        >>> evaluate_graph(net, graph, x, y).true_positive_rate
        >>> evaluate_graph(net, graph, DataLoader(TensorDataset(x, y), batch_size=256))
    """
    rows = _rows(batch_size)
    classes = None
    if graph.target is not None:
        classes = [graph.target] if isinstance(graph.target, int) else list(graph.target)
    # examples, correct with the mask, correct without, then the rates' counts
    totals = torch.zeros(3 + RATE_COUNTS, dtype=torch.int64)
    forward = _explained(model, output)
    warn_if_training(model)
    with torch.no_grad():
        for batch in labelled_batches(inputs, labels, show_progress):
            for piece in pieces(batch, rows):
                masked = _forward(forward, piece.inputs, graph).argmax(1)
                plain = _forward(forward, piece.inputs).argmax(1)
                truth = _labels_of(piece, masked.device)
                totals[:3] += torch.stack(
                    [torch.tensor(len(truth)), *correct_counts(masked, plain, truth)]
                )
                if classes is not None:
                    totals[3:] += rate_counts(masked, truth, classes)
    examples, masked_correct, plain_correct = examples_in(all_reduce_sum(totals))
    rates = None if classes is None else rates_from_counts(totals[3:], examples)
    return GraphEvaluation(
        accuracy=masked_correct / examples,
        true_positive_rate=None if rates is None else rates.true_positive_rate,
        kept_fraction=graph.kept_fraction,
        model_accuracy=plain_correct / examples,
        precision=None if rates is None else rates.precision,
        false_positive_rate=None if rates is None else rates.false_positive_rate,
        predicted_fraction=None if rates is None else rates.predicted_fraction,
    )


def ensemble_predict(
    model: Module,
    class_graphs: Mapping[int, DependencyGraph],
    inputs: Any,
    batch_size: Optional[int] = None,
    show_progress: bool = False,
    output: OutputSelector = None,
) -> Tensor:
    r"""
    The class-specific ensemble: for each input, the class whose masked
    network gives that class the highest score.

    Each class's graph masks the network in turn (:meth:`DependencyGraph.mask`);
    the score of class ``c`` is output column ``c`` of the network masked by
    ``c``'s graph, as the model returns it (logits for a logits model).

    Args:
        model (torch.nn.Module): The classifier the graphs were built on.
        class_graphs (Mapping[int, DependencyGraph]): One graph per class, e.g.
                    from ``StepwiseSensitivity.class_graphs``.
        inputs (Tensor, tuple[Tensor, ...] or Iterable): The inputs, dimension
                    0 the batch, or an iterable of batches such as a
                    ``DataLoader`` (tensors or ``(inputs, labels)`` pairs; the
                    labels are not used).
        batch_size (int, optional): Examples per forward pass, at most.
                    Default: each batch as given, up to 4096.
        show_progress (bool, optional): Show a progress bar over the batches.
                    Default: False
        output (str, int or Callable, optional): Which tensor of the model's
                    output holds the scores, for a model that returns a
                    ``ModelOutput``, a dict, a tuple or a namedtuple: a key or
                    attribute name, an index, or a callable
                    ``raw_output -> tensor``. Default: None (a tensor as it is,
                    else its ``logits``)

    Returns:
        *Tensor* ``(N,)`` of predicted classes (keys of ``class_graphs``), in
        the order of the inputs (under ``torch.distributed``, of this rank's).

    Examples::

        >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y)
        >>> accuracy = (ensemble_predict(net, graphs, x) == y).float().mean()
    """
    if not class_graphs:
        raise ValueError("class_graphs is empty: expected one graph per class, at least one")
    rows = _rows(batch_size)
    forward = _explained(model, output)
    warn_if_training(model)
    predictions = []
    with torch.no_grad():
        for batch in unlabelled_batches(inputs, show_progress):
            for piece in pieces(batch, rows):
                predictions.append(_ensemble_predictions(forward, class_graphs, piece.inputs))
    if not predictions:
        raise ValueError("inputs holds no batches: expected at least one example")
    return torch.cat(predictions)


def evaluate_ensemble(
    model: Module,
    class_graphs: Mapping[int, DependencyGraph],
    inputs: Any,
    labels: Optional[Tensor] = None,
    batch_size: Optional[int] = None,
    show_progress: bool = False,
    output: OutputSelector = None,
) -> EnsembleEvaluation:
    r"""
    The class-specific ensemble (:func:`ensemble_predict`) against the labels:
    its accuracy next to the plain network's, and for every class what the
    ensemble's predictions of it are worth (:class:`ClassRates`: true-positive
    rate, precision, false-positive rate, fraction of inputs predicted as it).

    Like :func:`evaluate_graph`, it reads the data once and keeps only counts,
    summed over the ranks under ``torch.distributed``.

    Args:
        model (torch.nn.Module): The classifier the graphs were built on.
        class_graphs (Mapping[int, DependencyGraph]): One graph per class.
        inputs (Tensor, tuple[Tensor, ...] or Iterable): The inputs,
                    dimension 0 the batch, with ``labels``; or, with
                    ``labels=None``, an iterable of ``(inputs, labels)``
                    batches such as a ``DataLoader``.
        labels (Tensor, optional): The ``(N,)`` true classes of tensor
                    ``inputs``. Default: None (the labels of each batch)
        batch_size (int, optional): Examples per forward pass, at most.
                    Default: each batch as given, up to 4096.
        show_progress (bool, optional): Show a progress bar over the batches.
                    Default: False
        output (str, int or Callable, optional): Which tensor of the model's
                    output holds the scores, for a model that returns a
                    ``ModelOutput``, a dict, a tuple or a namedtuple: a key or
                    attribute name, an index, or a callable
                    ``raw_output -> tensor``. Default: None (a tensor as it is,
                    else its ``logits``)

    Returns:
        *EnsembleEvaluation* with ``accuracy``, ``model_accuracy`` and
        ``classes`` (class -> :class:`ClassRates`).

    Examples::

        >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y)
        >>> report = evaluate_ensemble(net, graphs, x_test, y_test)
        >>> report.classes[3].false_positive_rate
    """
    if not class_graphs:
        raise ValueError("class_graphs is empty: expected one graph per class, at least one")
    rows = _rows(batch_size)
    classes = list(class_graphs)
    # examples, correct by the ensemble, correct by the network, then each class's counts
    totals = torch.zeros(3 + RATE_COUNTS * len(classes), dtype=torch.int64)
    forward = _explained(model, output)
    warn_if_training(model)
    with torch.no_grad():
        for batch in labelled_batches(inputs, labels, show_progress):
            for piece in pieces(batch, rows):
                predicted = _ensemble_predictions(forward, class_graphs, piece.inputs)
                plain = _forward(forward, piece.inputs).argmax(1)
                truth = _labels_of(piece, predicted.device)
                totals[:3] += torch.stack(
                    [torch.tensor(len(truth)), *correct_counts(predicted, plain, truth)]
                )
                totals[3:] += torch.cat([rate_counts(predicted, truth, [c]) for c in classes])
    examples, ensemble_correct, plain_correct = examples_in(all_reduce_sum(totals))
    per_class = totals[3:].reshape(len(classes), RATE_COUNTS)
    return EnsembleEvaluation(
        accuracy=ensemble_correct / examples,
        model_accuracy=plain_correct / examples,
        classes={c: rates_from_counts(counts, examples) for c, counts in zip(classes, per_class)},
    )


def ablation_importance(
    model: Module,
    layer: Union[str, Module],
    inputs: Any,
    labels: Optional[Tensor] = None,
    batch_size: Optional[int] = None,
    metric: str = "accuracy",
    show_progress: bool = False,
    output: OutputSelector = None,
) -> Tensor:
    r"""
    The ablation gold standard: how much worse the model does when one neuron
    of ``layer`` alone is zeroed, for every neuron.

    A neuron is a position along dim 1 of the layer's output (a unit, or a
    whole conv channel); zeroing it sets its output to 0 for every input. The
    ablations run in groups: a piece of the examples is repeated once per
    ablated neuron of a group, and a forward hook zeroes the group's ``j``-th
    neuron in the ``j``-th copy. No forward pass has more than ``batch_size``
    rows (copies x examples); the pieces and groups are the split within it
    that needs the fewest forward passes. The data is read once, a batch at a
    time; under ``torch.distributed`` each rank passes its shard and the sums
    are combined over the ranks.

    Args:
        model (torch.nn.Module): The classifier, output ``(N, classes)``
                    scores (logits for ``metric="loss"``).
        layer (str or torch.nn.Module): The layer, or its name in
                    ``model.named_modules()``.
        inputs (Tensor, tuple[Tensor, ...] or Iterable): The inputs,
                    dimension 0 the batch, with ``labels``; or, with
                    ``labels=None``, an iterable of ``(inputs, labels)``
                    batches such as a ``DataLoader``.
        labels (Tensor, optional): The ``(N,)`` true classes of tensor
                    ``inputs``. Default: None (the labels of each batch)
        batch_size (int, optional): Rows (copies x examples) per forward
                    pass, at most. Default: 4096.
        metric (str, optional): ``"accuracy"``: the drop in accuracy (the
                    paper's; on small data many neurons tie at 0).
                    ``"loss"``: the rise of the mean cross-entropy of the
                    outputs read as logits, which moves with every neuron
                    and so has no ties. Default: ``"accuracy"``
        show_progress (bool, optional): Show a progress bar over the batches.
                    Default: False
        output (str, int or Callable, optional): Which tensor of the model's
                    output holds the scores, for a model that returns a
                    ``ModelOutput``, a dict, a tuple or a namedtuple: a key or
                    attribute name, an index, or a callable
                    ``raw_output -> tensor``. Default: None (a tensor as it is,
                    else its ``logits``)

    Returns:
        *Tensor* ``(K,)``: the model's metric minus the metric with neuron
        ``k`` zeroed, as a loss (positive for neurons the decision needs).

    Examples::

        >>> importance = ablation_importance(net, net.fc1, x, y, metric="loss")
        >>> spearman_agreement(importance, graph.relevance(net.fc1))
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    module = resolve_layer(model, layer)
    rows = _rows(batch_size)
    forward = _explained(model, output)
    warn_if_training(model)
    size = 0
    # per ablated neuron its summed loss, then the unablated loss and the examples
    totals = torch.zeros(0, dtype=torch.float64)
    with torch.no_grad():
        for batch in labelled_batches(inputs, labels, show_progress):
            if not size:
                size = neuron_count(forward, module, batch.inputs)
                totals = torch.zeros(size + 2, dtype=torch.float64)
            for piece in pieces(batch, rows):
                scores = _forward(forward, piece.inputs)
                totals[size] += metric_losses(scores, _labels_of(piece), metric).sum()
            totals[size + 1] += batch.size
            examples_per_pass, neurons_per_pass = ablation_layout(batch.size, size, rows)
            for piece in pieces(batch, examples_per_pass):
                add_ablated_losses(totals, module, forward, piece, size, neurons_per_pass, metric)
    if not same_on_every_rank([size]):
        raise ValueError(
            "the ranks disagree on the layer's neuron count (or one has no batches): "
            "every rank needs at least one batch of inputs of the same shape"
        )
    if not size:
        raise ValueError("inputs holds no batches: expected at least one example")
    all_reduce_sum(totals)
    losses, base, examples = totals[:size], totals[size], totals[size + 1]
    return ((losses - base) / examples).to(torch.get_default_dtype())


def spearman_agreement(importance: Tensor, relevance: Tensor) -> float:
    r"""
    Spearman's :math:`\rho` between two rankings of the same neurons, e.g. the
    ablation gold standard and a layer's SSA relevance (the paper's Table 2).

    Args:
        importance (Tensor): ``(K,)`` scores, e.g. from
                    :func:`ablation_importance`.
        relevance (Tensor): ``(K,)`` scores, e.g.
                    ``graph.relevance(layer)``.

    Returns:
        *float* in [-1, 1]; NaN when either ranking is constant.
    """
    first = torch.as_tensor(importance).detach().cpu().reshape(-1)
    second = torch.as_tensor(relevance).detach().cpu().reshape(-1)
    if first.shape != second.shape:
        raise ValueError(
            "importance and relevance must score the same neurons, one value each: got "
            f"{first.numel()} and {second.numel()} values"
        )
    if first.numel() < 2 or bool((first == first[0]).all()) or bool((second == second[0]).all()):
        return math.nan  # rank correlation is undefined for constant rankings
    from scipy.stats import spearmanr  # imported where used: scipy.stats takes a second

    return float(spearmanr(first.double().numpy(), second.double().numpy()).statistic)


def _rows(batch_size: Optional[int]) -> int:
    return positive_int("batch_size", batch_size) or _DEFAULT_BATCH_ROWS


def _explained(model: Module, output: OutputSelector) -> ExplainedForward:
    """``model`` as the evaluations run it: the module the user wrote (that of a
    compiled model), its output selected by ``output``."""
    return ExplainedForward(model, checked_output(output))


def _forward(
    forward: ExplainedForward, inputs: tuple[Tensor, ...], graph: Optional[DependencyGraph] = None
) -> Tensor:
    """The model's scores, masked by ``graph`` if one is given (call under no_grad)."""
    with graph.mask(forward) if graph is not None else nullcontext():
        return output_tensor(forward(*inputs), "the graph evaluation")


def _ensemble_predictions(
    forward: ExplainedForward,
    class_graphs: Mapping[int, DependencyGraph],
    inputs: tuple[Tensor, ...],
) -> Tensor:
    classes = list(class_graphs)
    scores = torch.stack(
        [_forward(forward, inputs, class_graphs[label])[:, label] for label in classes], dim=1
    )
    return torch.tensor(classes, device=scores.device)[scores.argmax(1)]


def _labels_of(piece: Batch, device: Optional[torch.device] = None) -> Tensor:
    assert piece.labels is not None  # labelled_batches gives labels to every batch
    return piece.labels if device is None else piece.labels.to(device)
