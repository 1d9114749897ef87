"""Dependency graphs built by hand, and a plain networkx reference, for the graph tests."""

from __future__ import annotations

from typing import Any, Optional

import networkx as nx
import torch
from torch import nn

from captum_ssa.graph import DependencyGraph
from tests.models import build

KEPT = {"conv1": [0, 2], "conv2": [1, 3, 4], "fc1": [0, 2, 5], "fc2": [1]}


def make_graph(
    layers: dict[str, nn.Module],
    kept: dict[str, list[int]],
    local: bool = False,
    seed: int = 0,
    target: Any = 1,
    metadata: Optional[dict[str, Any]] = None,
) -> DependencyGraph:
    """A graph built by hand: random relevances, all pairs or every second pair as edges."""
    generator = torch.Generator().manual_seed(seed)
    names = list(layers)
    sizes = [layer_size(layers[name]) for name in names]
    neurons = [torch.tensor(kept[name]) for name in names]
    relevances = [torch.rand(size, generator=generator) for size in sizes[:-1]]
    relevances.append(torch.zeros(sizes[-1]).index_fill(0, neurons[-1], 1.0))
    matrices = [
        torch.rand(len(neurons[i + 1]), sizes[i], generator=generator)
        for i in range(len(names) - 1)
    ]
    edges = []
    for i in range(len(names) - 1):
        pairs = torch.cartesian_prod(neurons[i], neurons[i + 1])
        edges.append(pairs[::2] if local else pairs)
    return DependencyGraph(
        names,
        list(layers.values()),
        neurons,
        relevances,
        matrices,
        edges,
        target=target,
        metadata=metadata if metadata is not None else {"relevance": "gradient"},
    )


def layer_size(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def build_cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
    model, layers, _ = build("cnn")
    return model, layers


def reference_networkx(graph: DependencyGraph, label: Any = None) -> nx.DiGraph:
    """The graph as the SSA paper describes it, built plainly from the accessors."""
    name_of = label or (lambda layer, index: (layer, index))
    reference = nx.DiGraph()
    names = graph.layer_names
    for depth, layer in enumerate(names):
        for index in graph.neurons(layer).tolist():
            reference.add_node(
                name_of(layer, index),
                layer=layer,
                index=index,
                depth=depth,
                relevance=float(graph.relevance(layer)[index]),
            )
    for lower, upper in zip(names, names[1:]):
        matrix = graph.relevance_matrix(upper, lower)
        upper_kept = graph.neurons(upper).tolist()
        for source, sink in graph.edges(upper, lower).tolist():
            weight = float(matrix[upper_kept.index(sink), source])
            reference.add_edge(name_of(lower, source), name_of(upper, sink), weight=weight)
    return reference


def assert_same_networkx(actual: nx.DiGraph, expected: nx.DiGraph) -> None:
    assert dict(actual.nodes(data=True)) == dict(expected.nodes(data=True))
    assert {(s, t): d for s, t, d in actual.edges(data=True)} == {
        (s, t): d for s, t, d in expected.edges(data=True)
    }
