"""DependencyGraph: accessors, networkx form, files, drawing and masking."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import LineCollection
from torch import Tensor, nn

from captum_ssa._core.dependency_graph import DependencyGraph
from captum_ssa._utils.hooks import run_and_capture
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
    sizes = [_size(layers[name]) for name in names]
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


def _size(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@pytest.fixture
def cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
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


# ---------------------------------------------------------------- accessors


def test_accessors_by_name_and_module(cnn: Any) -> None:
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    for name, module in layers.items():
        assert graph.neurons(name).tolist() == KEPT[name]
        assert torch.equal(graph.neurons(module), graph.neurons(name))
        assert torch.equal(graph.relevance(module), graph.relevance(name))
        assert graph.relevance(name).shape == (_size(module),)
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


# ---------------------------------------------------------------- masking


def masked_cnn_reference(model: nn.Module, x: Tensor, kept: dict[str, list[int]]) -> list[Tensor]:
    """The zoo CNN's forward written out, zeroing the non-kept channels/units."""

    def zero_others(tensor: Tensor, keep: list[int]) -> Tensor:
        mask = torch.zeros(tensor.shape[1], dtype=torch.bool)
        mask[keep] = True
        return tensor * mask.reshape(1, -1, *([1] * (tensor.dim() - 2)))

    conv1 = zero_others(F.conv2d(x, model.conv1.weight, model.conv1.bias), kept["conv1"])
    hidden = F.max_pool2d(F.relu(conv1), 2)
    conv2 = zero_others(
        F.conv2d(hidden, model.conv2.weight, model.conv2.bias, padding=1), kept["conv2"]
    )
    hidden = F.avg_pool2d(F.relu(conv2), 2).flatten(1)
    fc1 = zero_others(F.linear(hidden, model.fc1.weight, model.fc1.bias), kept["fc1"])
    fc2 = F.linear(F.relu(fc1), model.fc2.weight, model.fc2.bias)
    return [conv1, conv2, fc1, fc2]


def no_hooks_left(model: nn.Module) -> bool:
    return all(not module._forward_hooks for module in model.modules())


def test_mask_zeroes_exactly_the_neurons_outside_the_graph(cnn: Any) -> None:
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    x = torch.randn(7, 1, 10, 10)
    before = model(x).detach()
    with graph.mask(model) as masked:
        assert masked is model
        output, captured = run_and_capture(model, (x,), list(layers.values()))
    expected = masked_cnn_reference(model, x, KEPT)
    for name, activation, reference in zip(layers, captured, expected):
        assert torch.allclose(activation, reference, atol=1e-6), name
        others = [k for k in range(activation.shape[1]) if k not in KEPT[name]]
        if name != "fc2":  # the top layer is never masked
            assert activation[:, others].abs().sum() == 0
            assert activation[:, KEPT[name]].abs().sum() > 0
    assert torch.allclose(output, expected[-1], atol=1e-6)
    assert captured[-1][:, [0, 2]].abs().sum() > 0
    assert no_hooks_left(model)
    assert torch.equal(model(x), before)


def test_mask_leaves_the_model_untouched_on_exception(cnn: Any) -> None:
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    x = torch.randn(3, 1, 10, 10)
    before = model(x).detach()
    parameters = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"), graph.mask(model):
        model(x)
        raise RuntimeError("inside the block")
    assert no_hooks_left(model)
    assert torch.equal(model(x), before)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), parameters))


def test_mask_by_name_on_a_copy_and_after_load(cnn: Any, tmp_path: Path) -> None:
    model, layers = cnn
    graph = make_graph(layers, KEPT)
    x = torch.randn(4, 1, 10, 10)
    with graph.mask(model):
        expected = model(x)
    twin = copy.deepcopy(model)
    with graph.mask(twin):
        assert torch.equal(twin(x), expected)
    graph.save(tmp_path / "graph.graphml")
    with DependencyGraph.load(tmp_path / "graph.graphml").mask(model):
        assert torch.equal(model(x), expected)
    assert no_hooks_left(model) and no_hooks_left(twin)


def test_mask_errors(cnn: Any) -> None:
    _, layers = cnn
    graph = make_graph(layers, KEPT)
    other, other_layers, _ = build("mlp")
    with pytest.raises(ValueError, match="not in the model"), graph.mask(other):
        pass
    mlp_graph = make_graph(
        other_layers, {"fc1": [0], "fc2": [1], "fc3": [2]}
    )  # fc1 has 8 units; give the CNN a layer of the same name with 6
    renamed = nn.Sequential()
    renamed.add_module("fc1", nn.Linear(3, 6))
    renamed.add_module("fc2", nn.Linear(6, 7))
    renamed.add_module("fc3", nn.Linear(7, 4))
    with pytest.raises(ValueError, match="another model"), mlp_graph.mask(renamed):
        renamed(torch.randn(2, 3))
    assert no_hooks_left(renamed)
    with pytest.raises(TypeError), graph.mask(lambda x: x):
        pass
