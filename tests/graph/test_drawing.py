"""The layered matplotlib drawing of a dependency graph."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.collections import LineCollection
from torch import nn

from tests.graph_helpers import (
    KEPT,
    build_cnn,
    make_graph,
)


@pytest.fixture
def cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
    return build_cnn()


# ---------------------------------------------------------------- drawing


@pytest.mark.parametrize("local", [False, True])
def test_draw_shows_every_node_and_edge(cnn: Any, local: bool) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT, local=local)
    figure = graph.draw()
    (axes,) = figure.axes
    (nodes,) = [c for c in axes.collections if c.get_gid() == "dependency-graph-neurons"]
    assert len(nodes.get_offsets()) == graph.to_networkx().number_of_nodes()
    drawn_edges = sum(
        len(c.get_segments()) for c in axes.collections if isinstance(c, LineCollection)
    )
    assert drawn_edges == graph.to_networkx().number_of_edges()
    # lowest layer at the bottom, node sizes ordered like relevance within a layer
    offsets, sizes = nodes.get_offsets(), nodes.get_sizes()
    assert offsets[:2, 1].tolist() == [0, 0] and offsets[-1, 1] == 3
    relevance = graph.relevance("conv1")[torch.tensor(KEPT["conv1"])]
    assert (sizes[0] > sizes[1]) == bool(relevance[0] > relevance[1])
    assert axes.get_yticklabels()[0].get_text() == "conv1  2/4"
    plt.close(figure)


def test_draw_into_given_axes(cnn: Any) -> None:
    _, layers = cnn
    figure, (left, right) = plt.subplots(1, 2)
    assert make_graph(layers, KEPT).draw(ax=right) is figure
    assert any(c.get_gid() == "dependency-graph-neurons" for c in right.collections)
    assert not left.collections
    plt.close(figure)
