"""Comparing class graphs: bag of nodes, Jaccard, Ward clustering, clustermap, shared subgraph."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import fcluster

from captum_ssa.graph import DependencyGraph
from captum_ssa.graph.comparison import (
    BagOfNodes,
    bag_of_nodes,
    cluster_classes,
    jaccard_similarity,
    plot_clustermap,
    shared_subgraph,
)

NAMES = ["low", "mid", "top"]
SIZES = [5, 4, 3]


def class_graph(kept: list[list[int]], target: int, seed: int = 0) -> DependencyGraph:
    """A graph over three layers with every pair of kept neurons as an edge."""
    generator = torch.Generator().manual_seed(seed)
    neurons = [torch.tensor(k, dtype=torch.long) for k in kept]
    return DependencyGraph(
        NAMES,
        None,
        neurons,
        [torch.rand(size, generator=generator) for size in SIZES],
        [torch.rand(len(neurons[i + 1]), SIZES[i], generator=generator) for i in range(2)],
        [torch.cartesian_prod(neurons[i], neurons[i + 1]).reshape(-1, 2) for i in range(2)],
        target=target,
    )


@pytest.fixture
def graphs() -> dict[int, DependencyGraph]:
    return {
        0: class_graph([[0, 1, 2], [1, 3], [0]], 0, seed=0),
        1: class_graph([[1, 2, 4], [1, 2], [1]], 1, seed=1),
        2: class_graph([[3], [0], [2]], 2, seed=2),
    }


def test_bag_of_nodes_known_vectors(graphs: dict[int, DependencyGraph]) -> None:
    bag = bag_of_nodes(graphs)
    assert bag.classes == [0, 1, 2]
    assert bag.nodes == [
        ("low", 0), ("low", 1), ("low", 2), ("low", 3), ("low", 4),
        ("mid", 0), ("mid", 1), ("mid", 2), ("mid", 3),
        ("top", 0), ("top", 1), ("top", 2),
    ]  # fmt: skip
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0],
            [0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0],
            [0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(bag.vectors, expected)
    hidden = bag_of_nodes(graphs, layers=["low", "mid"])
    assert hidden.nodes == bag.nodes[:9]
    assert torch.equal(hidden.vectors, expected[:, :9])


def test_jaccard_known_answers(graphs: dict[int, DependencyGraph]) -> None:
    similarity = jaccard_similarity(bag_of_nodes(graphs, layers=["low", "mid"]))
    # class 0: low {0,1,2} mid {1,3}; class 1: low {1,2,4} mid {1,2}; class 2: low {3} mid {0}
    expected = torch.tensor(
        [
            [1.0, 3 / 7, 0.0],
            [3 / 7, 1.0, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    assert torch.allclose(similarity, expected)


@settings(max_examples=20, deadline=None)
@given(
    kept=st.lists(
        st.tuples(st.sets(st.integers(0, 4)), st.sets(st.integers(0, 3))), min_size=2, max_size=4
    )
)
def test_jaccard_matches_set_arithmetic(kept: list[tuple[set[int], set[int]]]) -> None:
    graphs = {
        c: class_graph([sorted(low), sorted(mid), [c % 3]], c) for c, (low, mid) in enumerate(kept)
    }
    similarity = jaccard_similarity(bag_of_nodes(graphs, layers=["low", "mid"]))
    for a, b in itertools.product(range(len(kept)), repeat=2):
        nodes_a = {("low", i) for i in kept[a][0]} | {("mid", i) for i in kept[a][1]}
        nodes_b = {("low", i) for i in kept[b][0]} | {("mid", i) for i in kept[b][1]}
        union = nodes_a | nodes_b
        expected = len(nodes_a & nodes_b) / len(union) if union else 1.0
        assert similarity[a, b].item() == pytest.approx(expected)


def test_shared_subgraph_known_answer(graphs: dict[int, DependencyGraph]) -> None:
    shared = shared_subgraph([graphs[0], graphs[1]])
    assert isinstance(shared, DependencyGraph)
    assert shared.neurons("low").tolist() == [1, 2]
    assert shared.neurons("mid").tolist() == [1]
    assert shared.neurons("top").tolist() == []
    assert sorted(map(tuple, shared.edges("mid", "low").tolist())) == [(1, 1), (2, 1)]
    assert shared.edges("top", "mid").tolist() == []
    assert set(shared.to_networkx().edges) == {(("low", 1), ("mid", 1)), (("low", 2), ("mid", 1))}
    assert shared.target is None
    assert shared.metadata == {"shared_by": [0, 1]}
    mean_relevance = (graphs[0].relevance("low") + graphs[1].relevance("low")) / 2
    assert torch.allclose(shared.relevance("low"), mean_relevance)
    # mid neuron 1 is row 0 of both graphs' mid x low matrices
    rows = [g.relevance_matrix("mid", "low")[0] for g in (graphs[0], graphs[1])]
    assert torch.allclose(shared.relevance_matrix("mid", "low"), ((rows[0] + rows[1]) / 2)[None])
    weights = dict(zip(map(tuple, shared.edges("mid", "low").tolist()),
                       shared.edge_weights("mid", "low").tolist()))  # fmt: skip
    assert weights[(2, 1)] == pytest.approx(((rows[0] + rows[1]) / 2)[2].item())
    assert shared_subgraph([graphs[0]]) == graphs[0].__class__(
        NAMES,
        None,
        [graphs[0].neurons(n) for n in NAMES],
        [graphs[0].relevance(n) for n in NAMES],
        [graphs[0].relevance_matrix("mid", "low"), graphs[0].relevance_matrix("top", "mid")],
        [graphs[0].edges("mid", "low"), graphs[0].edges("top", "mid")],
        metadata={"shared_by": [0]},
    )
    nothing = shared_subgraph(list(graphs.values()))
    assert nothing.to_networkx().number_of_nodes() == 0


def test_shared_subgraph_keeps_only_edges_common_to_all() -> None:
    local = class_graph([[0, 1], [2], [0]], 0)
    other = DependencyGraph(
        NAMES,
        None,
        [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([0])],
        [torch.rand(size) for size in SIZES],
        [torch.rand(1, 5), torch.rand(1, 4)],
        [torch.tensor([[1, 2]]), torch.tensor([[2, 0]])],
        target=1,
    )
    shared = shared_subgraph([local, other])
    assert shared.neurons("low").tolist() == [0, 1]
    assert shared.edges("mid", "low").tolist() == [[1, 2]]
    assert shared.edges("top", "mid").tolist() == [[2, 0]]


def test_comparison_errors(graphs: dict[int, DependencyGraph]) -> None:
    other = DependencyGraph(
        ["a", "b"], None, [torch.tensor([0]), torch.tensor([0])],
        [torch.rand(2), torch.rand(2)], [torch.rand(1, 2)], [torch.tensor([[0, 0]])],
    )  # fmt: skip
    with pytest.raises(ValueError, match="different layers"):
        shared_subgraph([graphs[0], other])
    with pytest.raises(ValueError, match="different layers"):
        bag_of_nodes({0: graphs[0], 1: other})
    with pytest.raises(ValueError, match="no graphs"):
        shared_subgraph([])
    with pytest.raises(ValueError, match="not in the graphs"):
        bag_of_nodes(graphs, layers=["low", "fc9"])
    with pytest.raises(ValueError, match="at least two"):
        cluster_classes(bag_of_nodes({0: graphs[0]}))


def hand_bag(vectors: list[list[float]]) -> BagOfNodes:
    columns = len(vectors[0])
    return BagOfNodes(
        [f"class {i}" for i in range(len(vectors))],
        [("layer", j) for j in range(columns)],
        torch.tensor(vectors),
    )


def test_ward_clustering_on_known_groups() -> None:
    bag = hand_bag(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1],
            [1, 1, 1, 0, 0, 1],
        ]
    )
    tree = cluster_classes(bag)
    assert tree.shape == (4, 4)
    groups = fcluster(tree, 2, "maxclust")
    assert groups[0] == groups[1] == groups[4]
    assert groups[2] == groups[3] != groups[0]


def test_clustering_uses_cosine_geometry() -> None:
    # a vector and a multiple of it are the same direction: they merge first, at distance 0
    bag = hand_bag([[1, 0, 0, 1], [3, 0, 0, 3], [1, 1, 0, 0], [0, 0, 1, 0]])
    tree = cluster_classes(bag)
    assert sorted(tree[0, :2].tolist()) == [0, 1]
    assert tree[0, 2] == pytest.approx(0.0, abs=1e-12)
    # equals Ward on explicitly normalised vectors
    from scipy.cluster.hierarchy import linkage

    vectors = bag.vectors.double().numpy()
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(tree, linkage(normalised, "ward"))


def test_clustermap_rows_follow_the_dendrogram(graphs: dict[int, DependencyGraph]) -> None:
    bag = hand_bag([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 1]])
    figure = plot_clustermap(bag)
    _, map_axes = figure.axes
    (image,) = map_axes.images
    rows = np.asarray(image.get_array())
    labels = [t.get_text() for t in map_axes.get_yticklabels()]
    assert sorted(labels) == sorted(bag.classes)
    for row, label in zip(rows, labels):
        assert np.array_equal(row, bag.vectors[bag.classes.index(label)].numpy())
    # groups {0, 2} and {1, 3} are adjacent rows
    assert {frozenset(labels[:2]), frozenset(labels[2:])} == {
        frozenset({"class 0", "class 2"}),
        frozenset({"class 1", "class 3"}),
    }
    plt.close(figure)
    figure = plot_clustermap(bag_of_nodes(graphs))
    assert [t.get_text() for t in figure.axes[1].get_xticklabels()] == NAMES
    plt.close(figure)
