"""Dependency graphs in files: every format reads back, load restores an equal graph."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_ssa.graph import DependencyGraph
from tests.graph_helpers import (
    KEPT,
    assert_same_networkx,
    build_cnn,
    make_graph,
    reference_networkx,
)


@pytest.fixture
def cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
    return build_cnn()


# ---------------------------------------------------------------- files


def _string_ids(layer: str, index: int) -> str:
    return f"{layer}:{index}"


def read_dot(path: Path) -> nx.DiGraph:
    """A plain reader for the DOT the graph writes (no pydot needed)."""
    attribute = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,\s\]]+)')

    def parse(text: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, raw in attribute.findall(text):
            if raw.startswith('"'):
                values[key] = raw[1:-1].replace('\\"', '"')
            elif re.fullmatch(r"-?\d+", raw):
                values[key] = int(raw)
            else:
                values[key] = float(raw)
        return values

    graph = nx.DiGraph()
    for line in path.read_text().splitlines():
        edge = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[(.*)\];$', line)
        node = re.match(r'\s*"([^"]+)" \[(.*)\];$', line)
        if edge:
            graph.add_edge(edge.group(1), edge.group(2), **parse(edge.group(3)))
        elif node:
            values = parse(node.group(2))
            values.pop("label")
            graph.add_node(node.group(1), **values)
    return graph


def read_back(path: Path) -> nx.DiGraph:
    """Read a saved file with networkx (or the plain DOT reader), node ids as written."""
    if path.suffix == ".graphml":
        return nx.read_graphml(path)
    if path.suffix == ".gexf":
        graph = nx.read_gexf(path)
        for _, data in graph.nodes(data=True):
            data.pop("label")
        for _, _, data in graph.edges(data=True):
            data.pop("id")
        return graph
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    return read_dot(path)


@pytest.mark.parametrize("suffix", [".graphml", ".gexf", ".json", ".dot"])
@pytest.mark.parametrize("local", [False, True])
def test_every_format_reads_back_with_the_same_nodes_edges_and_weights(
    cnn: Any, tmp_path: Path, suffix: str, local: bool
) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT, local=local)
    path = tmp_path / f"graph{suffix}"
    graph.save(path)
    assert_same_networkx(read_back(path), reference_networkx(graph, _string_ids))


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_load_restores_an_equal_graph(cnn: Any, tmp_path: Path, suffix: str) -> None:
    _, layers = cnn
    metadata = {"relevance": "gradient", "percentile": 50, "branching": None, "pair": (1, 2)}
    graph = make_graph(layers, KEPT, local=True, target=[1, 2], metadata=metadata)
    path = tmp_path / f"graph{suffix}"
    graph.save(path)
    loaded = DependencyGraph.load(path)
    assert loaded == graph
    assert loaded.layers is None
    assert loaded.target == [1, 2]
    assert loaded.metadata["pair"] == [1, 2]  # JSON keeps tuples as lists
    for name in layers:
        assert torch.equal(loaded.relevance(name), graph.relevance(name))
        assert loaded.relevance(name).dtype == graph.relevance(name).dtype
    assert_same_networkx(loaded.to_networkx(), graph.to_networkx())


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_a_graph_with_nan_relevances_equals_its_round_trip(
    cnn: Any, tmp_path: Path, suffix: str
) -> None:
    """A hand-built graph may hold NaN (e.g. a signed relevance of 0/0): NaN equals NaN."""
    _, layers = cnn
    graph = make_graph(layers, KEPT, metadata={"relevance": "gradient", "scale": float("nan")})
    relevances = [graph.relevance(name) for name in layers]
    relevances[1][0] = float("nan")
    matrices = [
        graph.relevance_matrix(upper, lower) for lower, upper in zip(layers, list(layers)[1:])
    ]
    matrices[0][0, 1] = float("nan")
    edges = [graph.edges(upper, lower) for lower, upper in zip(layers, list(layers)[1:])]
    with_nan = DependencyGraph(
        graph.layer_names,
        graph.layers,
        [graph.neurons(name) for name in layers],
        relevances,
        matrices,
        edges,
        target=graph.target,
        metadata=graph.metadata,
    )
    assert with_nan == with_nan
    assert with_nan != graph
    with_nan.save(tmp_path / f"graph{suffix}")
    loaded = DependencyGraph.load(tmp_path / f"graph{suffix}")
    assert loaded == with_nan
    changed = loaded.relevance("conv1")
    changed[0] += 1.0
    other = DependencyGraph(
        loaded.layer_names,
        None,
        [loaded.neurons(name) for name in layers],
        [changed if name == "conv1" else loaded.relevance(name) for name in layers],
        matrices,
        edges,
        target=loaded.target,
        metadata=loaded.metadata,
    )
    assert other != with_nan


def test_load_keeps_other_metadata_by_name(cnn: Any, tmp_path: Path) -> None:
    from captum.attr import LayerIntegratedGradients

    _, layers = cnn
    graph = make_graph(layers, KEPT, metadata={"relevance": LayerIntegratedGradients})
    graph.save(tmp_path / "graph.json")
    loaded = DependencyGraph.load(tmp_path / "graph.json")
    assert loaded.metadata["relevance"].endswith("LayerIntegratedGradients")
    assert loaded == graph  # equality compares the saved form


def test_load_errors(cnn: Any, tmp_path: Path) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT)
    for suffix in (".gexf", ".dot"):
        graph.save(tmp_path / f"graph{suffix}")
        with pytest.raises(ValueError, match="cannot load"):
            DependencyGraph.load(tmp_path / f"graph{suffix}")
    nx.write_graphml(nx.DiGraph([("a", "b")]), tmp_path / "other.graphml")
    with pytest.raises(ValueError, match=r"not written by DependencyGraph\.save"):
        DependencyGraph.load(tmp_path / "other.graphml")
    with pytest.raises(ValueError, match="cannot save"):
        graph.save(tmp_path / "graph.png")


@st.composite
def random_graphs(draw: Any) -> DependencyGraph:
    depth = draw(st.integers(1, 4))
    sizes = [draw(st.integers(1, 6)) for _ in range(depth)]
    neurons = [
        torch.tensor(
            sorted(draw(st.sets(st.integers(0, size - 1), max_size=size))), dtype=torch.long
        )
        for size in sizes
    ]
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    relevances = [torch.randn(size, generator=generator) for size in sizes]
    matrices = [
        torch.randn(len(neurons[i + 1]), sizes[i], generator=generator, dtype=torch.float64)
        for i in range(depth - 1)
    ]
    edges = []
    for i in range(depth - 1):
        pairs = torch.cartesian_prod(neurons[i], neurons[i + 1]).reshape(-1, 2)
        keep = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
        edges.append(pairs[torch.tensor(keep, dtype=torch.bool)] if len(pairs) else pairs)
    names = [f"block.{i}" for i in range(depth)]
    target = draw(st.one_of(st.none(), st.integers(0, 9), st.lists(st.integers(0, 9))))
    return DependencyGraph(names, None, neurons, relevances, matrices, edges, target=target)


@settings(max_examples=12, deadline=None)
@given(graph=random_graphs())
def test_random_graphs_survive_every_format(graph: DependencyGraph) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".graphml", ".gexf", ".json", ".dot"):
            path = Path(folder) / f"graph{suffix}"
            graph.save(path)
            assert_same_networkx(read_back(path), reference_networkx(graph, _string_ids))
            if suffix in (".graphml", ".json"):
                assert DependencyGraph.load(path) == graph


@pytest.mark.parametrize("suffix", [".graphml", ".json"])
def test_a_graph_loaded_with_its_model_takes_the_modules(cnn: Any, tmp_path: Path, suffix: str):
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    graph.save(tmp_path / f"graph{suffix}")
    by_name = DependencyGraph.load(tmp_path / f"graph{suffix}")
    with pytest.raises(KeyError, match="knows its layers only by name"):
        by_name.relevance(next(iter(layers.values())))
    loaded = DependencyGraph.load(tmp_path / f"graph{suffix}", model=model)
    assert loaded == graph and loaded.forward_func is model
    assert loaded.layers is not None
    for name, module in layers.items():
        assert loaded.layers[loaded.depth_of(name)] is module
        assert torch.equal(loaded.relevance(module), graph.relevance(name))
        assert torch.equal(loaded.neurons(module), graph.neurons(module))
    with pytest.raises(ValueError, match="is not in the model"):
        DependencyGraph.load(tmp_path / f"graph{suffix}", model=nn.Sequential(nn.Linear(2, 2)))
