"""DependencyGraph: the constructor, accessors, networkx form, equality and copies."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn

from captum_ssa.graph import DependencyGraph
from captum_ssa.graph._parts import unique_pairs
from tests.graph_helpers import (
    KEPT,
    assert_same_networkx,
    build_cnn,
    layer_size,
    make_graph,
    reference_networkx,
)


@pytest.fixture
def cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
    return build_cnn()


# ---------------------------------------------------------------- accessors


def test_accessors_by_name_and_module(cnn: Any) -> None:
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    for name, module in layers.items():
        assert graph.neurons(name).tolist() == KEPT[name]
        assert torch.equal(graph.neurons(module), graph.neurons(name))
        assert torch.equal(graph.relevance(module), graph.relevance(name))
        assert graph.relevance(name).shape == (layer_size(module),)
    assert graph.relevance("fc2").tolist() == [0.0, 1.0, 0.0]
    assert graph.relevance_matrix("conv2", model.conv1).shape == (3, 4)
    assert graph.relevance_matrix(model.fc2, "fc1").shape == (1, 6)
    assert graph.layer_names == list(layers)
    assert graph.target == 1
    assert graph.metadata == {"relevance": "gradient"}
    assert graph.layer_sizes == [4, 5, 6, 3]
    assert graph.kept_fraction == pytest.approx((2 + 3 + 3) / (4 + 5 + 6))


def test_accessors_return_copies(cnn: Any) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT)
    graph.neurons("conv1")[0] = 3
    graph.relevance("fc1").zero_()
    assert graph.neurons("conv1").tolist() == [0, 2]
    assert graph.relevance("fc1").abs().sum() > 0


def test_layer_errors(cnn: Any) -> None:
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    with pytest.raises(KeyError, match="no layer named"):
        graph.neurons("pool1")
    with pytest.raises(KeyError, match="not one of the graph's layers"):
        graph.relevance(model.pool1)
    with pytest.raises(ValueError, match="not directly above"):
        graph.relevance_matrix("conv1", "conv2")
    with pytest.raises(ValueError, match="not directly above"):
        graph.relevance_matrix("fc2", "conv2")
    with pytest.raises(TypeError):
        graph.neurons(3)  # type: ignore[arg-type]


def test_constructor_stores_detached_cpu_copies(cnn: Any) -> None:
    _, layers = cnn
    relevance = torch.rand(4, requires_grad=True)
    graph = DependencyGraph(
        ["conv1", "conv2"],
        [layers["conv1"], layers["conv2"]],
        [torch.tensor([1]), torch.tensor([0])],
        [relevance, torch.tensor([1.0, 0, 0, 0, 0])],
        [torch.rand(1, 4)],
        [torch.tensor([[1, 0]])],
        target=torch.tensor(0),
    )
    assert not graph.relevance("conv1").requires_grad
    assert graph.relevance("conv1").device.type == "cpu"
    assert graph.target == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"neurons": [[2, 0], [1, 3, 4], [0, 2, 5], [1]]}, "sorted"),
        ({"neurons": [[0, 7], [1, 3, 4], [0, 2, 5], [1]]}, "must lie in"),
        ({"matrix_rows": 2}, "must be shaped"),
        ({"edges": [[1, 1]]}, "not in the graph"),
        ({"edges": [[0, 0]]}, "not in the graph"),
        (
            {"edges": [[0, 1], [2, 3], [0, 4], [2, 3]]},
            r"edges\[0\] lists a \(lower, upper\) pair twice",
        ),
        ({"drop_relevance": True}, "relevances has"),
        ({"names": ["conv1", "conv1", "fc1", "fc2"]}, "unique"),
    ],
)
def test_constructor_rejects_broken_arguments(
    cnn: Any, change: dict[str, Any], message: str
) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT)
    names = change.get("names", graph.layer_names)
    neurons = [torch.tensor(n) for n in change.get("neurons", [KEPT[k] for k in layers])]
    relevances = [graph.relevance(name) for name in layers]
    if change.get("drop_relevance"):
        relevances = relevances[:-1]
    matrices = [graph.relevance_matrix(u, lo) for lo, u in zip(list(layers), list(layers)[1:])]
    if "matrix_rows" in change:
        matrices[0] = torch.rand(change["matrix_rows"], 4)
    edges = [graph.edges(u, lo) for lo, u in zip(list(layers), list(layers)[1:])]
    if "edges" in change:
        edges[0] = torch.tensor(change["edges"])
    with pytest.raises(ValueError, match=message):
        DependencyGraph(names, list(layers.values()), neurons, relevances, matrices, edges)


# ---------------------------------------------------------------- networkx


@pytest.mark.parametrize("local", [False, True])
def test_to_networkx_matches_the_specification(cnn: Any, local: bool) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT, local=local)
    actual = graph.to_networkx()
    assert_same_networkx(actual, reference_networkx(graph))
    pairs = [len(KEPT[a]) * len(KEPT[b]) for a, b in zip(list(KEPT), list(KEPT)[1:])]
    expected = sum((p + 1) // 2 for p in pairs) if local else sum(pairs)
    assert actual.number_of_edges() == expected
    for source, sink in actual.edges:
        assert actual.nodes[sink]["depth"] == actual.nodes[source]["depth"] + 1
    assert ("conv1", 0) in actual and isinstance(actual.nodes[("conv1", 0)]["index"], int)


def test_to_networkx_returns_a_fresh_copy(cnn: Any) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT)
    graph.to_networkx().remove_node(("conv1", 0))
    assert ("conv1", 0) in graph.to_networkx()


def test_repr(cnn: Any) -> None:
    _, layers = cnn
    text = repr(make_graph(layers, KEPT, metadata={"relevance": "gradient", "mode": "local"}))
    assert "conv1: 2/4" in text and "fc2: 1/3" in text
    assert "target=1" in text and "mode='local'" in text


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda graph: pickle.loads(pickle.dumps(graph))],
    ids=["copy", "deepcopy", "pickle"],
)
def test_copies_are_equal_dependency_graphs(cnn: Any, duplicate: Any) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT, metadata={"relevance": "gradient"})
    graph.to_networkx()  # the cached networkx form travels with the copy
    twin = duplicate(graph)
    assert type(twin) is DependencyGraph
    assert twin == graph and repr(twin) == repr(graph)
    assert_same_networkx(twin.to_networkx(), graph.to_networkx())
    assert twin.layer_names == graph.layer_names and twin.layers is not None
    assert len(twin.layers) == len(layers)
    with pytest.raises(TypeError, match="unhashable"):
        hash(twin)


# ---------------------------------------------------------------- edge deduplication


def random_pairs(
    generator: torch.Generator, count: int, first: tuple, second: tuple
) -> torch.Tensor:
    """``count`` pairs drawn from two ranges, a third of them repeated."""
    pairs = torch.stack(
        [
            torch.randint(*first, (count,), generator=generator),
            torch.randint(*second, (count,), generator=generator),
        ],
        1,
    )
    return torch.cat([pairs, pairs[: count // 3]])[
        torch.randperm(count + count // 3, generator=generator)
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((0, 3), (0, 3)),
        ((0, 1000), (0, 300)),
        ((-50, 50), (-7, 0)),
        ((2**62, 2**62 + 1000), (-(2**62) - 5, -(2**62) + 5)),  # large, with small spans
        ((0, 2**32), (-(2**30), 2**30)),  # a key span of exactly 2**63
        ((-(2**63), -(2**63) + 3), (2**63 - 4, 2**63 - 1)),  # at int64's ends
        ((0, 2**40), (0, 2**40)),  # spans whose product passes int64: row-wise unique
        ((-(2**63), 2**63 - 1), (-(2**63), 2**63 - 1)),
    ],
)
def test_unique_pairs_equals_unique_over_rows(first: tuple, second: tuple) -> None:
    generator = torch.Generator().manual_seed(first[0] % 1000 + second[1] % 1000)
    for count in (1, 2, 7, 300):
        pairs = random_pairs(generator, count, first, second)
        assert torch.equal(unique_pairs(pairs), pairs.unique(dim=0))


def test_unique_pairs_keeps_the_dtype_and_empty_edges() -> None:
    empty = torch.zeros(0, 2, dtype=torch.long)
    assert torch.equal(unique_pairs(empty), empty.unique(dim=0))
    small = torch.tensor([[3, 1], [0, 2], [3, 1]], dtype=torch.int32)
    assert unique_pairs(small).dtype == torch.int32
    assert torch.equal(unique_pairs(small), small.unique(dim=0))
