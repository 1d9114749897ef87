"""Planted circuits: networks whose class circuits are known, and a score of a
dependency graph against them.

:func:`planted_network` builds an MLP or a small CNN whose weights are small
random noise except a planted set per class: each planted unit of a hidden
layer reads the class's planted units of the layer below with weight 1, the
class's input features drive its first planted layer, and the class logit
reads its last planted layer. The noise scale, the fan-in, the overlap
between classes and the depth are arguments. :meth:`PlantedNetwork.inputs`
draws examples (uniform noise plus a bump on the class's features), and
:func:`score_graph` gives the precision, recall and F1 of a graph's kept
neurons and edges against the planted ones. :func:`layer_attribution_graph`
builds the graph a Captum layer method gives (its top ``k`` lower neurons per
upper neuron), so that Captum's methods can be scored beside SSA's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_ssa import DependencyGraph, StepwiseSensitivity
from captum_ssa.relevance import CaptumRelevance

Node = tuple[str, int]
Edge = tuple[Node, Node]
ARCHITECTURES = ("mlp", "cnn")


class PlantedMLP(nn.Module):
    """Linear layers ``hidden1..hiddenD`` with ReLUs ``relu1..reluD``, then ``logits``."""

    def __init__(self, features: int, width: int, depth: int, classes: int) -> None:
        super().__init__()
        self.depth = depth
        sizes = [features] + [width] * depth
        for layer in range(1, depth + 1):
            setattr(self, f"hidden{layer}", self.hidden_layer(sizes[layer - 1], width))
            setattr(self, f"relu{layer}", nn.ReLU())
        self.logits = nn.Linear(width, classes)

    @staticmethod
    def hidden_layer(inputs: int, outputs: int) -> nn.Module:
        """One hidden layer (before its ReLU)."""
        return nn.Linear(inputs, outputs)

    def hidden(self, inputs: Tensor) -> Tensor:
        """The last hidden layer's ReLU output."""
        for layer in range(1, self.depth + 1):
            inputs = getattr(self, f"relu{layer}")(getattr(self, f"hidden{layer}")(inputs))
        return inputs

    def forward(self, inputs: Tensor) -> Tensor:
        return self.logits(self.hidden(inputs))


class PlantedCNN(PlantedMLP):
    """3x3 convolutions ``hidden1..hiddenD`` (padding 1) with ReLUs, a global average
    pool, then ``logits``: the planted units are channels."""

    def __init__(self, features: int, width: int, depth: int, classes: int) -> None:
        super().__init__(features, width, depth, classes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    @staticmethod
    def hidden_layer(inputs: int, outputs: int) -> nn.Module:
        return nn.Conv2d(inputs, outputs, 3, padding=1)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.logits(self.flatten(self.pool(self.hidden(inputs))))


@dataclass
class PlantedNetwork:
    r"""
    A network with planted class circuits (see :func:`planted_network`).

    Attributes:
        model (nn.Module): The network, in eval mode, without gradients on its
                    parameters.
        layer_names (list[str]): The layers to give SSA, lowest first: the
                    hidden ReLUs ``relu1..reluD`` and ``logits``.
        input_features (dict[int, list[int]]): The input features (channels
                    for the CNN) each class's examples raise.
        planted_neurons (dict[int, dict[str, list[int]]]): For each class and
                    each layer of ``layer_names``, the planted neurons (the
                    class's own logit at the top).
        planted_edges (dict[int, set[tuple[Node, Node]]]): For each class, its
                    planted edges as ``((lower layer, index), (upper layer,
                    index))`` pairs between consecutive ``layer_names``, the
                    direction :class:`DependencyGraph` edges go.
        architecture (str): ``"mlp"`` or ``"cnn"``.
        features (int): Input features (channels for the CNN).
        image_size (int): The side of the CNN's square inputs (unused by the MLP).
    """

    model: nn.Module
    layer_names: list[str]
    input_features: dict[int, list[int]]
    planted_neurons: dict[int, dict[str, list[int]]]
    planted_edges: dict[int, set[Edge]]
    architecture: str
    features: int
    image_size: int = 6

    @property
    def layers(self) -> list[nn.Module]:
        """The modules of :attr:`layer_names`, for :class:`StepwiseSensitivity`."""
        return [getattr(self.model, name) for name in self.layer_names]

    @property
    def classes(self) -> list[int]:
        """The classes, in order."""
        return sorted(self.planted_neurons)

    def inputs(
        self,
        examples_per_class: int,
        seed: int = 0,
        input_noise: float = 0.5,
        bump: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        r"""
        Examples of every class: uniform noise in ``[0, input_noise)`` on every feature,
        plus ``bump`` on the class's own input features (every pixel of the
        class's channels for the CNN).

        Args:
            examples_per_class (int): Examples drawn per class.
            seed (int, optional): Seed of the noise. Default: 0
            input_noise (float, optional): Width of the uniform noise. Default: 0.5
            bump (float, optional): Added to the class's features. Default: 1.0

        Returns:
            *tuple[Tensor, Tensor]*: the inputs, ``(N, F)`` for the MLP or
            ``(N, F, S, S)`` for the CNN, and their ``(N,)`` class labels,
            class by class.

        Examples::

            >>> planted = planted_network(seed=0)
            >>> x, y = planted.inputs(32)
        """
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(len(self.classes)).repeat_interleave(examples_per_class)
        shape: tuple[int, ...] = (len(labels), self.features)
        if self.architecture == "cnn":
            shape += (self.image_size, self.image_size)
        inputs = torch.rand(shape, generator=generator) * input_noise
        for label in self.classes:
            rows = (labels == label).nonzero().flatten()
            columns = torch.tensor(self.input_features[label])
            inputs[rows[:, None], columns[None, :]] += bump
        return inputs, labels


def _class_units(classes: int, fan_in: int, shared: int) -> list[list[int]]:
    """Each class's ``fan_in`` units, consecutive classes sharing ``shared`` of them."""
    step = fan_in - shared
    return [list(range(label * step, label * step + fan_in)) for label in range(classes)]


def planted_network(
    architecture: str = "mlp",
    classes: int = 4,
    fan_in: int = 3,
    depth: int = 2,
    width: int = 32,
    features: int = 16,
    noise: float = 0.03,
    overlap: float = 0.0,
    seed: int = 0,
) -> PlantedNetwork:
    r"""
    A network whose class circuits are planted: the ground truth of a graph.

    Every weight is Gaussian noise of standard deviation ``noise`` (biases
    zero) except the planted ones: class ``c`` has ``fan_in`` planted units in
    every hidden layer; each reads the class's ``fan_in`` planted units of the
    layer below (its ``fan_in`` input features at the first layer) with weight
    1 (the centre tap of a 3x3 kernel for the CNN), and logit ``c`` reads the
    class's planted units of the last hidden layer with weight 1. The planted
    units of consecutive classes share ``round(overlap * fan_in)`` units, in
    every layer and in the inputs. So on an example of class ``c`` (its
    features raised, see :meth:`PlantedNetwork.inputs`) the class's circuit
    carries the signal to its logit, and the noise weights carry little.

    Args:
        architecture (str, optional): ``"mlp"`` (Linear layers) or ``"cnn"``
                    (3x3 convolutions on ``features`` channels, global average
                    pool, Linear logits). Default: ``"mlp"``
        classes (int, optional): Classes, one logit each. Default: 4
        fan_in (int, optional): Planted units per class and layer, each read by
                    every planted unit of the class above. Default: 3
        depth (int, optional): Hidden layers. Default: 2
        width (int, optional): Units (channels) per hidden layer. Default: 32
        features (int, optional): Input features (channels). Default: 16
        noise (float, optional): Standard deviation of the non-planted
                    weights. Default: 0.03
        overlap (float, optional): Fraction of a class's planted units shared
                    with the next class, in [0, 1). Default: 0.0
        seed (int, optional): Seed of the noise weights. Default: 0

    Returns:
        *PlantedNetwork*: the model and its planted neurons and edges per class.

    Raises:
        ValueError: for an unknown architecture, an overlap outside [0, 1), or
                    planted units that do not fit in ``width`` or ``features``.

    Examples::

        >>> planted = planted_network("mlp", classes=4, fan_in=3, noise=0.03)
        >>> x, y = planted.inputs(32)
        >>> ssa = StepwiseSensitivity(planted.model, planted.layers)
        >>> graph = ssa.attribute(x[y == 0], target=0, mode="local", branching=3)
        >>> score_graph(graph, planted, 0).neuron_recall
        1.0
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}")
    shared = round(overlap * fan_in)
    units = _class_units(classes, fan_in, shared)
    needed = units[-1][-1] + 1
    if needed > min(width, features):
        raise ValueError(
            f"{classes} classes of {fan_in} planted units sharing {shared} need {needed} units, "
            f"more than width={width} or features={features}"
        )
    generator = torch.Generator().manual_seed(seed)
    model_class = PlantedMLP if architecture == "mlp" else PlantedCNN
    model = model_class(features, width, depth, classes)
    with torch.no_grad():
        for layer in range(1, depth + 2):
            module = getattr(model, f"hidden{layer}" if layer <= depth else "logits")
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * noise)
            module.bias.zero_()
            for label, lower in enumerate(units):
                upper = [label] if layer > depth else lower
                rows, columns = torch.tensor(upper)[:, None], torch.tensor(lower)[None, :]
                if module.weight.dim() == 4:
                    module.weight[rows, columns, 1, 1] = 1.0
                else:
                    module.weight[rows, columns] = 1.0
    model.eval().requires_grad_(False)
    layer_names = [f"relu{layer}" for layer in range(1, depth + 1)] + ["logits"]
    planted_neurons: dict[int, dict[str, list[int]]] = {}
    planted_edges: dict[int, set[Edge]] = {}
    for label, own in enumerate(units):
        tops = [own] * depth + [[label]]
        planted_neurons[label] = dict(zip(layer_names, tops))
        planted_edges[label] = {
            ((lower_name, lower), (upper_name, upper))
            for lower_name, upper_name, upper_units in zip(layer_names, layer_names[1:], tops[1:])
            for lower in own
            for upper in upper_units
        }
    return PlantedNetwork(
        model,
        layer_names,
        dict(enumerate(units)),
        planted_neurons,
        planted_edges,
        architecture,
        features,
    )


@dataclass(frozen=True)
class PlantedScore:
    r"""
    A graph against the planted circuit of one class.

    Attributes:
        neuron_precision, neuron_recall, neuron_f1 (float): Of the kept neurons
                    of the hidden layers (every listed layer but the top, whose
                    neurons are the starting ones) against the planted ones.
        edge_precision, edge_recall, edge_f1 (float): Of the graph's edges
                    against the planted edges.
        per_layer (dict[str, tuple[float, float, float]]): Neuron precision,
                    recall and F1 of each hidden layer.

    A precision with nothing kept, or a recall with nothing planted, is 0.
    """

    neuron_precision: float
    neuron_recall: float
    neuron_f1: float
    edge_precision: float
    edge_recall: float
    edge_f1: float
    per_layer: dict[str, tuple[float, float, float]]


def _precision_recall_f1(found: set[Any], planted: set[Any]) -> tuple[float, float, float]:
    hits = len(found & planted)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(planted) if planted else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def graph_nodes_and_edges(graph: DependencyGraph) -> tuple[set[Node], set[Edge]]:
    """Every kept ``(layer, index)`` of ``graph`` and every ``(lower, upper)`` edge."""
    names = graph.layer_names
    nodes = {(name, index) for name in names for index in graph.neurons(name).tolist()}
    edges = {
        ((lower, int(pair[0])), (upper, int(pair[1])))
        for lower, upper in zip(names, names[1:])
        for pair in graph.edges(upper, lower).tolist()
    }
    return nodes, edges


def score_graph(graph: DependencyGraph, planted: PlantedNetwork, label: int) -> PlantedScore:
    r"""
    Precision, recall and F1 of a graph's kept neurons and edges against the
    planted circuit of class ``label``.

    Args:
        graph (DependencyGraph): A graph over ``planted.layer_names`` (e.g.
                    SSA's class graph of ``label``).
        planted (PlantedNetwork): The network the graph explains.
        label (int): The class whose circuit is the truth.

    Returns:
        *PlantedScore*: the scores over the hidden layers, edges and per layer.

    Examples::

        >>> score = score_graph(graph, planted, 0)
        >>> score.neuron_recall, score.edge_precision
    """
    if list(graph.layer_names) != planted.layer_names:
        raise ValueError(
            f"the graph's layers {list(graph.layer_names)} are not the planted network's "
            f"{planted.layer_names}"
        )
    nodes, edges = graph_nodes_and_edges(graph)
    hidden = planted.layer_names[:-1]
    truth = planted.planted_neurons[label]
    planted_nodes = {(name, index) for name in hidden for index in truth[name]}
    kept = {node for node in nodes if node[0] in hidden}
    per_layer = {
        name: _precision_recall_f1(
            {node for node in kept if node[0] == name},
            {node for node in planted_nodes if node[0] == name},
        )
        for name in hidden
    }
    return PlantedScore(
        *_precision_recall_f1(kept, planted_nodes),
        *_precision_recall_f1(edges, planted.planted_edges[label]),
        per_layer,
    )


def layer_attribution_graph(
    planted: PlantedNetwork,
    inputs: Tensor,
    label: int,
    method: Union[type, Attribution],
    top_k: int,
    **attribute_kwargs: Any,
) -> DependencyGraph:
    r"""
    The graph a Captum layer method gives: from the class logit down, each
    kept upper neuron attributes its activity to the layer below with
    ``method`` (mean over ``inputs`` of the absolute attribution) and keeps its
    top ``top_k`` lower neurons.

    This is SSA's local mode with the Captum method as Step I
    (:class:`~captum_ssa.relevance.CaptumRelevance`, ``branching=top_k``,
    Step II's mean), which is exactly that construction, so no second
    implementation of it is needed.

    Args:
        planted (PlantedNetwork): The network.
        inputs (Tensor): The examples (usually those of class ``label``).
        label (int): The class logit the graph starts from.
        method (type or Attribution): A Captum layer attribution class, e.g.
                    :class:`captum.attr.LayerConductance`.
        top_k (int): Lower neurons kept per upper neuron.
        **attribute_kwargs: Passed to every ``attribute`` call of ``method``
                    (e.g. ``n_steps``).

    Returns:
        *DependencyGraph* over ``planted.layer_names``.

    Examples::

        >>> from captum.attr import LayerConductance
        >>> graph = layer_attribution_graph(planted, x[y == 0], 0, LayerConductance, 3,
        ...                                 n_steps=8)
    """
    ssa = StepwiseSensitivity(planted.model, planted.layers)
    return ssa.attribute(
        inputs,
        target=label,
        relevance=CaptumRelevance(method, **attribute_kwargs),
        mode="local",
        branching=top_k,
    )


def missed_neurons(graph: DependencyGraph, planted: PlantedNetwork, label: int) -> list[Node]:
    """The planted hidden neurons of class ``label`` that ``graph`` does not keep."""
    nodes, _ = graph_nodes_and_edges(graph)
    truth = planted.planted_neurons[label]
    return [
        (name, index)
        for name in planted.layer_names[:-1]
        for index in truth[name]
        if (name, index) not in nodes
    ]
