"""Measuring dependency graphs against the network (the uses of a graph in the SSA paper).

- a graph as a compressed classifier: the network with every hidden neuron
  outside the graph set to zero (:func:`evaluate_graph`), and the
  class-specific ensemble (:func:`ensemble_predict`);
- the same with labels, and what each class's predictions are worth
  (:func:`evaluate_ensemble`);
- the ablation gold standard (:func:`ablation_importance`) and its Spearman
  agreement with a relevance ranking (:func:`spearman_agreement`), the paper's
  Table 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, NamedTuple, Optional, Union

import torch
from scipy.stats import spearmanr
from torch import Tensor
from torch.nn import Module
from torch.nn.functional import cross_entropy

from captum_ssa._core.dependency_graph import DependencyGraph
from captum_ssa._utils.hooks import check_layers_in_model, no_grad_capture
from captum_ssa._utils.model_state import warn_if_training
from captum_ssa._utils.validation import positive_int

Inputs = Union[Tensor, tuple[Tensor, ...]]

# Rows per forward pass when no batch size is given: small enough for any
# reasonable model's activations, large enough to keep the passes few.
_DEFAULT_BATCH_ROWS = 4096
_METRICS = ("accuracy", "loss")


class GraphEvaluation(NamedTuple):
    """How well the network restricted to a dependency graph classifies.

    ``accuracy`` and ``model_accuracy`` are over all inputs, with and without
    the mask. ``kept_fraction`` is the fraction of the hidden layers' neurons
    that the graph keeps. The rest describe the graph's own class(es) C
    (``graph.target``), as a one-against-the-rest classifier:

    - ``true_positive_rate``: of the inputs labelled in C, the fraction the
      masked network assigns to their label (NaN when no input is in C);
    - ``precision``: of the inputs the masked network assigns to a class of
      C, the fraction whose label is that class (NaN when it assigns none);
    - ``false_positive_rate``: of the inputs labelled outside C, the
      fraction the masked network assigns to a class of C (NaN when every
      input is in C);
    - ``predicted_fraction``: the fraction of all inputs the masked network
      assigns to a class of C.

    A masked network that predicts C for every input has a true-positive
    rate of 1 and is useless; its false-positive rate of 1 and a
    ``predicted_fraction`` of 1 say so. All four are None for a graph
    without a target.
    """

    accuracy: float
    true_positive_rate: Optional[float]
    kept_fraction: float
    model_accuracy: float
    precision: Optional[float] = None
    false_positive_rate: Optional[float] = None
    predicted_fraction: Optional[float] = None


class ClassRates(NamedTuple):
    """One class (or set of classes) C against the rest, from predictions and labels.

    ``true_positive_rate``, ``precision``, ``false_positive_rate`` and
    ``predicted_fraction`` as in :class:`GraphEvaluation`; NaN where the
    fraction has no inputs to count.
    """

    true_positive_rate: float
    precision: float
    false_positive_rate: float
    predicted_fraction: float


class EnsembleEvaluation(NamedTuple):
    """How the class-specific ensemble classifies (:func:`evaluate_ensemble`).

    ``accuracy`` and ``model_accuracy`` are over all inputs, for the ensemble
    and the plain network; ``classes`` holds, for every class of the ensemble,
    its :class:`ClassRates` from the ensemble's predictions, so that a class
    the ensemble predicts for almost everything shows as such.
    """

    accuracy: float
    model_accuracy: float
    classes: dict[int, ClassRates]


def class_rates(predictions: Tensor, labels: Tensor, classes: Sequence[int]) -> ClassRates:
    r"""
    The one-against-the-rest rates of the classes ``classes`` (see :class:`ClassRates`).

    Args:
        predictions (Tensor): ``(N,)`` predicted classes.
        labels (Tensor): ``(N,)`` true classes.
        classes (Sequence[int]): The class(es) C counted as positive.

    Returns:
        *ClassRates*; a fraction with nothing to count is NaN.

    Examples::

        >>> rates = class_rates(torch.tensor([3, 3, 1, 1]), torch.tensor([3, 1, 1, 1]), [3])
        >>> rates.precision, rates.predicted_fraction
        (0.5, 0.5)
    """
    labels = labels.to(predictions.device)
    chosen = torch.tensor(list(classes), device=predictions.device)
    own = torch.isin(labels, chosen)
    predicted = torch.isin(predictions, chosen)
    hits = predictions == labels

    def fraction(counted: Tensor, among: Tensor) -> float:
        return (counted & among).sum().item() / among.sum().item() if among.any() else math.nan

    return ClassRates(
        true_positive_rate=fraction(hits, own),
        precision=fraction(hits, predicted),
        false_positive_rate=fraction(predicted, ~own),
        predicted_fraction=predicted.float().mean().item(),
    )


def evaluate_graph(
    model: Module,
    graph: DependencyGraph,
    inputs: Inputs,
    labels: Tensor,
    batch_size: Optional[int] = None,
) -> GraphEvaluation:
    r"""
    The graph as a compressed classifier: run ``model`` with every neuron of
    the graph's hidden layers that is not in the graph set to zero
    (:meth:`DependencyGraph.mask`), and compare its predictions with ``labels``.

    For a class-specific graph (SSA on one class's inputs, starting from that
    class) the paper reports the true-positive rate on the class's own inputs
    next to the original network's accuracy, with about half the neurons kept.

    Args:
        model (torch.nn.Module): The classifier the graph was built on; its
                    output is ``(N, classes)`` scores.
        graph (DependencyGraph): The graph to evaluate.
        inputs (Tensor or tuple[Tensor, ...]): The inputs, dimension 0 the
                    batch.
        labels (Tensor): The ``(N,)`` true classes.
        batch_size (int, optional): Examples per forward pass. Default: all
                    at once, up to 4096.

    Returns:
        *GraphEvaluation* with ``accuracy``, ``true_positive_rate``,
        ``kept_fraction``, ``model_accuracy``, and what the true-positive
        rate costs: ``precision``, ``false_positive_rate`` and
        ``predicted_fraction`` of the graph's class(es).

    Examples::

        >>> graph = StepwiseSensitivity(net, layers).attribute(x[y == 3], target=3)
        >>> evaluate_graph(net, graph, x, y).true_positive_rate
    """
    inputs, labels = _check_inputs(inputs, labels)
    masked = _predictions(model, inputs, batch_size, graph)
    plain = _predictions(model, inputs, batch_size)
    labels = labels.to(masked.device)
    rates: Optional[ClassRates] = None
    if graph.target is not None:
        classes = [graph.target] if isinstance(graph.target, int) else graph.target
        rates = class_rates(masked, labels, classes)
    return GraphEvaluation(
        accuracy=(masked == labels).float().mean().item(),
        true_positive_rate=None if rates is None else rates.true_positive_rate,
        kept_fraction=graph.kept_fraction,
        model_accuracy=(plain == labels).float().mean().item(),
        precision=None if rates is None else rates.precision,
        false_positive_rate=None if rates is None else rates.false_positive_rate,
        predicted_fraction=None if rates is None else rates.predicted_fraction,
    )


def ensemble_predict(
    model: Module,
    class_graphs: Mapping[int, DependencyGraph],
    inputs: Inputs,
    batch_size: Optional[int] = None,
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
        inputs (Tensor or tuple[Tensor, ...]): The inputs, dimension 0 the
                    batch.
        batch_size (int, optional): Examples per forward pass. Default: all
                    at once, up to 4096.

    Returns:
        *Tensor* ``(N,)`` of predicted classes (keys of ``class_graphs``).

    Examples::

        >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y)
        >>> accuracy = (ensemble_predict(net, graphs, x) == y).float().mean()
    """
    if not class_graphs:
        raise ValueError("class_graphs is empty: expected one graph per class, at least one")
    inputs, _ = _check_inputs(inputs, None)
    classes = list(class_graphs)
    scores = torch.stack(
        [_outputs(model, inputs, batch_size, class_graphs[label])[:, label] for label in classes],
        dim=1,
    )
    return torch.tensor(classes, device=scores.device)[scores.argmax(1)]


def evaluate_ensemble(
    model: Module,
    class_graphs: Mapping[int, DependencyGraph],
    inputs: Inputs,
    labels: Tensor,
    batch_size: Optional[int] = None,
) -> EnsembleEvaluation:
    r"""
    The class-specific ensemble (:func:`ensemble_predict`) against ``labels``:
    its accuracy next to the plain network's, and for every class what the
    ensemble's predictions of it are worth (:class:`ClassRates`: true-positive
    rate, precision, false-positive rate, fraction of inputs predicted as it).

    Args:
        model (torch.nn.Module): The classifier the graphs were built on.
        class_graphs (Mapping[int, DependencyGraph]): One graph per class.
        inputs (Tensor or tuple[Tensor, ...]): The inputs, dimension 0 the
                    batch.
        labels (Tensor): The ``(N,)`` true classes.
        batch_size (int, optional): Examples per forward pass. Default: all
                    at once, up to 4096.

    Returns:
        *EnsembleEvaluation* with ``accuracy``, ``model_accuracy`` and
        ``classes`` (class -> :class:`ClassRates`).

    Examples::

        >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y)
        >>> report = evaluate_ensemble(net, graphs, x_test, y_test)
        >>> report.classes[3].false_positive_rate
    """
    inputs, labels = _check_inputs(inputs, labels)
    predictions = ensemble_predict(model, class_graphs, inputs, batch_size)
    plain = _predictions(model, inputs, batch_size)
    labels = labels.to(predictions.device)
    return EnsembleEvaluation(
        accuracy=(predictions == labels).float().mean().item(),
        model_accuracy=(plain == labels).float().mean().item(),
        classes={label: class_rates(predictions, labels, [label]) for label in class_graphs},
    )


def ablation_importance(
    model: Module,
    layer: Union[str, Module],
    inputs: Inputs,
    labels: Tensor,
    batch_size: Optional[int] = None,
    metric: str = "accuracy",
) -> Tensor:
    r"""
    The ablation gold standard: how much worse the model does when one neuron
    of ``layer`` alone is zeroed, for every neuron.

    A neuron is a position along dim 1 of the layer's output (a unit, or a
    whole conv channel); zeroing it sets its output to 0 for every input. The
    ablations run in batches: the inputs are repeated once per ablated neuron
    in a chunk, and a forward hook zeroes neuron ``k`` in the ``k``-th copy.
    No forward pass has more than ``batch_size`` rows: when the inputs
    outnumber it, each ablation runs over chunks of them.

    Args:
        model (torch.nn.Module): The classifier, output ``(N, classes)``
                    scores (logits for ``metric="loss"``).
        layer (str or torch.nn.Module): The layer, or its name in
                    ``model.named_modules()``.
        inputs (Tensor or tuple[Tensor, ...]): The inputs, dimension 0 the
                    batch.
        labels (Tensor): The ``(N,)`` true classes.
        batch_size (int, optional): Rows (copies x examples) per forward
                    pass, at most. Default: 4096.
        metric (str, optional): ``"accuracy"``: the drop in accuracy (the
                    paper's; on small data many neurons tie at 0).
                    ``"loss"``: the rise of the mean cross-entropy of the
                    outputs read as logits, which moves with every neuron
                    and so has no ties. Default: ``"accuracy"``

    Returns:
        *Tensor* ``(K,)``: the model's metric minus the metric with neuron
        ``k`` zeroed, as a loss (positive for neurons the decision needs).

    Examples::

        >>> importance = ablation_importance(net, net.fc1, x, y, metric="loss")
        >>> spearman_agreement(importance, graph.relevance(net.fc1))
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    module = _resolve_layer(model, layer)
    inputs, labels = _check_inputs(inputs, labels)
    warn_if_training(model)
    examples = len(labels)
    size = _neuron_count(model, module, inputs)
    rows = positive_int("batch_size", batch_size) or _DEFAULT_BATCH_ROWS
    per_chunk = min(examples, rows)  # examples per forward pass
    copies_per_pass = rows // per_chunk  # ablated neurons per forward pass
    losses = torch.zeros(size, dtype=torch.float64)  # summed over the examples
    base = _losses(_outputs(model, inputs, rows), labels, metric).sum()
    with torch.no_grad():
        for start in range(0, examples, per_chunk):
            chunk = tuple(t[start : start + per_chunk] for t in inputs)
            chunk_labels = labels[start : start + per_chunk]
            count = len(chunk_labels)
            for first in range(0, size, copies_per_pass):
                ablated = torch.arange(first, min(first + copies_per_pass, size))
                copies = len(ablated)
                handle = module.register_forward_hook(_ablation_hook(ablated, size, count))
                try:
                    outputs = model(*(_repeat(t, copies) for t in chunk))
                finally:
                    handle.remove()
                per_row = _losses(outputs, chunk_labels.repeat(copies), metric)
                losses[first : first + copies] += per_row.reshape(copies, count).sum(1)
    return ((losses - base) / examples).to(torch.get_default_dtype())


def _losses(outputs: Tensor, labels: Tensor, metric: str) -> Tensor:
    """Per-example loss in float64 on the CPU: 1 for a wrong prediction
    (``"accuracy"``), or the cross-entropy of the outputs as logits (``"loss"``)."""
    labels = labels.to(outputs.device)
    if metric == "accuracy":
        return (outputs.argmax(1) != labels).double().cpu()
    return cross_entropy(outputs.double(), labels, reduction="none").cpu()


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
    return float(spearmanr(first.double().numpy(), second.double().numpy()).statistic)


def _check_inputs(inputs: Inputs, labels: Optional[Tensor]) -> tuple[tuple[Tensor, ...], Tensor]:
    """Inputs as a tuple of detached tensors, labels as a 1-D tensor, sizes checked."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, tuple) or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}"
        )
    if not inputs or any(t.dim() == 0 for t in inputs):
        raise ValueError("inputs must be tensors with a batch dimension (dim 0), got a scalar")
    examples = {len(t) for t in inputs}
    if len(examples) != 1 or 0 in examples:
        raise ValueError(
            f"inputs must share one non-zero batch size (dim 0), got {sorted(examples)}"
        )
    if labels is None:
        return tuple(t.detach() for t in inputs), torch.empty(0, dtype=torch.long)
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(inputs[0]):
        raise ValueError(
            f"labels must hold one class per input: expected {len(inputs[0])}, got {len(labels)}"
        )
    return tuple(t.detach() for t in inputs), labels


def _batches(inputs: tuple[Tensor, ...], batch_size: Optional[int]) -> Iterator[tuple[Tensor, ...]]:
    size = positive_int("batch_size", batch_size) or _DEFAULT_BATCH_ROWS
    for first in range(0, len(inputs[0]), size):
        yield tuple(t[first : first + size] for t in inputs)


def _outputs(
    model: Module,
    inputs: tuple[Tensor, ...],
    batch_size: Optional[int],
    graph: Optional[DependencyGraph] = None,
) -> Tensor:
    """The model's outputs, masked by ``graph`` if one is given, without gradients."""
    warn_if_training(model)
    with torch.no_grad(), graph.mask(model) if graph is not None else nullcontext():
        return torch.cat([model(*batch) for batch in _batches(inputs, batch_size)])


def _predictions(
    model: Module,
    inputs: tuple[Tensor, ...],
    batch_size: Optional[int],
    graph: Optional[DependencyGraph] = None,
) -> Tensor:
    return _outputs(model, inputs, batch_size, graph).argmax(1)


def _resolve_layer(model: Module, layer: Union[str, Module]) -> Module:
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(
                f"no layer named {layer!r} in {type(model).__name__}: layer must be a module "
                "of the model or its name in model.named_modules()"
            )
        return modules[layer]
    check_layers_in_model(model, [layer])
    return layer


def _neuron_count(model: Module, layer: Module, inputs: tuple[Tensor, ...]) -> int:
    """The size of dim 1 of the layer's output, from one example."""
    (output,) = no_grad_capture(model, tuple(t[:1] for t in inputs), [layer])
    if output.dim() < 2:
        raise ValueError(
            f"layer must output (N, neurons, ...) with the neurons along dim 1, got an output "
            f"shaped {tuple(output.shape)}"
        )
    return output.shape[1]


def _repeat(tensor: Tensor, copies: int) -> Tensor:
    return tensor.repeat(copies, *([1] * (tensor.dim() - 1)))


def _ablation_hook(ablated: Tensor, size: int, examples: int) -> Any:
    """Zero neuron ``ablated[j]`` in the ``j``-th copy of the examples."""

    def hook(_module: Module, _args: Any, output: Tensor) -> Tensor:
        copies = len(ablated)
        keep = torch.ones(copies, size, dtype=torch.bool, device=output.device)
        keep[torch.arange(copies), ablated.to(output.device)] = False
        keep = keep.repeat_interleave(examples, dim=0)
        keep = keep.reshape(copies * examples, size, *([1] * (output.dim() - 2)))
        return torch.where(keep, output, torch.zeros((), dtype=output.dtype, device=output.device))

    return hook
