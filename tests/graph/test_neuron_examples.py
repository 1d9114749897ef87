"""What each neuron responds to: the top examples against a plain loop over the
examples, the patterns against a plain autograd gradient, and the encodings."""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Optional

import pytest
import torch
from matplotlib.image import imread
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import StepwiseSensitivity, memory_budget
from captum_ssa.graph import DependencyGraph, neuron_examples
from captum_ssa.graph.neuron_examples import THUMBNAIL_SMALLEST, find
from tests.models import TwoInputs, build, layer_output

TOP = 3


def ssa_graph(
    model: nn.Module,
    layers: list[nn.Module],
    x: Tensor,
    neuron_dim: Optional[int] = None,
    **options: Any,
) -> Any:
    return StepwiseSensitivity(model, layers, neuron_dim=neuron_dim).attribute(
        x, target=1, **options
    )


@pytest.fixture(scope="module")
def cnn() -> tuple[nn.Module, dict[str, nn.Module], Tensor, DependencyGraph]:
    model, layers, shape = build("cnn")
    x = torch.randn(23, *shape, generator=torch.Generator().manual_seed(1))
    return model, layers, x, ssa_graph(model, list(layers.values()), x)


@pytest.fixture(scope="module")
def mlp() -> tuple[nn.Module, dict[str, nn.Module], Tensor, DependencyGraph]:
    model, layers, shape = build("mlp")
    x = torch.randn(17, *shape, generator=torch.Generator().manual_seed(2))
    return model, layers, x, ssa_graph(model, list(layers.values()), x, branching=3)


def activity(model: nn.Module, layer: nn.Module, example: Tensor, neuron_dim: int = 1) -> Tensor:
    """One example's activity of every neuron of ``layer``: the mean over the other axes."""
    output = layer_output(model, layer, example[None])[0]
    axis = neuron_dim - 1 if neuron_dim > 0 else output.dim() + neuron_dim
    return output.movedim(axis, 0).reshape(output.shape[axis], -1).mean(1)


def reference_top(
    model: nn.Module,
    layers: dict[str, nn.Module],
    graph: DependencyGraph,
    x: Tensor,
    neuron_dim: int = 1,
) -> dict[str, list[tuple[int, float]]]:
    """Each kept hidden neuron's ``(example, activity)``, the largest first, by a plain
    loop over the examples and a stable sort (ties by index)."""
    reference = {}
    with torch.no_grad():
        for name in graph.layer_names[:-1]:
            table = torch.stack([activity(model, layers[name], e, neuron_dim) for e in x])
            for neuron in graph.neurons(name).tolist():
                order = sorted(range(len(x)), key=lambda i: (-float(table[i, neuron]), i))
                reference[f"{name}:{neuron}"] = [(i, float(table[i, neuron])) for i in order[:TOP]]
    return reference


def tops(shown: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    return {
        key: [(entry["example"], entry["activation"]) for entry in value["top"]]
        for key, value in shown.items()
    }


def assert_same_tops(found: dict[str, Any], reference: dict[str, Any]) -> None:
    assert found.keys() == reference.keys()
    for key in reference:
        assert [i for i, _ in found[key]] == [i for i, _ in reference[key]], key
        assert [a for _, a in found[key]] == pytest.approx([a for _, a in reference[key]], abs=1e-5)


def assert_same_shown(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal, but for activations to rounding (a batch's size may change the sums' order)."""
    assert_same_tops(tops(found), tops(expected))

    def without_activations(shown: dict[str, Any]) -> dict[str, Any]:
        return {
            key: {**value, "top": [{**e, "activation": None} for e in value["top"]]}
            for key, value in shown.items()
        }

    assert without_activations(found) == without_activations(expected)


def decoded_png(uri: str) -> Any:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix) :])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_the_top_examples_are_a_plain_loops(name, request):
    model, layers, x, graph = request.getfixturevalue(name)
    shown = neuron_examples(graph, x, top=TOP)
    hidden = graph.layer_names[:-1]
    assert list(shown) == [f"{n}:{i}" for n in hidden for i in graph.neurons(n).tolist()]
    assert_same_tops(tops(shown), reference_top(model, layers, graph, x))


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_a_stream_of_batches_gives_what_the_tensor_gives(name, request):
    _, _, x, graph = request.getfixturevalue(name)
    whole = neuron_examples(graph, x, top=TOP)
    assert_same_shown(neuron_examples(graph, list(x.split(5)), top=TOP), whole)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=4)
    assert_same_shown(neuron_examples(graph, loader, top=TOP), whole)


def test_fewer_examples_than_top_lists_them_all(mlp):
    _, _, x, graph = mlp
    shown = neuron_examples(graph, x[:2], top=5)
    assert all(len(value["top"]) == 2 for value in shown.values())


def test_images_get_thumbnails_and_patterns_that_decode(cnn):
    _, _, x, graph = cnn
    shown = neuron_examples(graph, x, top=TOP)
    side = 10 * math.ceil(THUMBNAIL_SMALLEST / 10)  # 10x10 inputs, each pixel a block
    for value in shown.values():
        for entry in value["top"]:
            assert entry["text"] is None and entry["values"] is None
            image = decoded_png(entry["image"])
            assert image.shape == (side, side)  # grey
            assert image.min() == 0.0 and image.max() == 1.0  # min-max scaled
        assert decoded_png(value["pattern"]).shape == (side, side, 3)


def test_the_pattern_is_the_gradient_of_the_activity_on_the_top_example(cnn):
    model, layers, x, graph = cnn
    found = find(graph, x, top=TOP)
    assert found.kind == "image"
    for running in found.tops:
        for row, neuron in enumerate(running.neurons.tolist()):
            example = x[int(running.indices[row, 0])][None].clone().requires_grad_()
            value = layer_output(model, layers[running.name], example)[0, neuron].mean()
            (gradient,) = torch.autograd.grad(value, example)
            pattern = found.patterns[f"{running.name}:{neuron}"]
            assert pattern is not None
            torch.testing.assert_close(pattern, gradient[0].sum(0))


def test_patterns_in_chunks_of_one_neuron_are_the_same(cnn):
    _, _, x, graph = cnn
    whole = find(graph, x, top=TOP).patterns
    with memory_budget(1):
        assert find(graph, x, top=TOP).patterns.keys() == whole.keys()
        for key, pattern in find(graph, x, top=TOP).patterns.items():
            torch.testing.assert_close(pattern, whole[key])


class TanhAbove(nn.Module):
    """conv -> ReLU -> conv -> tanh -> fc: piecewise linear up to conv2's output only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 3, 3)
        self.fc1 = nn.Linear(3 * 4 * 4, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(hidden.flatten(1))))


def test_layers_above_a_non_piecewise_linear_operation_get_no_pattern():
    torch.manual_seed(0)
    model = TanhAbove().eval()
    x = torch.randn(9, 3, 8, 8)
    layers = [model.conv1, model.conv2, model.fc1, model.fc2]
    graph = ssa_graph(model, layers, x, branching=2)
    shown = neuron_examples(graph, x, top=2)
    patterns = {key: value["pattern"] for key, value in shown.items()}
    assert all(patterns[key] is not None for key in patterns if key.startswith(("conv1", "conv2")))
    assert all(patterns[key] is None for key in patterns if key.startswith("fc1"))
    image = decoded_png(shown[next(iter(shown))]["top"][0]["image"])
    assert image.shape == (32, 32, 3)  # RGB thumbnails of 8x8 inputs


def test_tabular_inputs_give_their_values(mlp):
    _, _, x, graph = mlp
    shown = neuron_examples(graph, x, top=TOP)
    for value in shown.values():
        assert value["pattern"] is None
        for entry in value["top"]:
            assert entry["image"] is None and entry["text"] is None
            expected = [float(f"{v:.4g}") for v in x[entry["example"]].double().tolist()]
            assert entry["values"] == expected


class TokenModel(nn.Module):
    """Token ids -> embedding -> per-position Linear -> ReLU -> mean over tokens -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 6)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(self.embedding(ids))).mean(1))


def test_token_inputs_give_their_text_and_neuron_dim_is_respected():
    torch.manual_seed(3)
    model = TokenModel().eval()
    ids = torch.randint(0, 12, (11, 4))
    layers = {"fc1": model.fc1, "fc2": model.fc2}
    graph = ssa_graph(model, list(layers.values()), ids, neuron_dim=-1, branching=3)
    assert graph.metadata["neuron_dim"] == -1
    shown = neuron_examples(graph, ids, top=TOP)
    assert_same_tops(tops(shown), reference_top(model, layers, graph, ids, neuron_dim=-1))
    for value in shown.values():
        assert value["pattern"] is None
        for entry in value["top"]:
            assert entry["text"] == " ".join(map(str, ids[entry["example"]].tolist()))
            assert entry["image"] is None and entry["values"] is None
    decoded = neuron_examples(graph, ids, top=1, decode=lambda t: "".join(chr(97 + i) for i in t))
    entry = next(iter(decoded.values()))["top"][0]
    assert entry["text"] == "".join(chr(97 + i) for i in ids[entry["example"]].tolist())


def test_a_loaded_graph_needs_the_model_and_then_gives_the_same(cnn, tmp_path):
    model, _, x, graph = cnn
    assert graph.forward_func is model
    path = tmp_path / "graph.json"
    graph.save(path)
    loaded = DependencyGraph.load(path)
    assert loaded.forward_func is None
    with pytest.raises(ValueError, match="pass forward_func=model"):
        neuron_examples(loaded, x)
    assert_same_shown(
        neuron_examples(loaded, x, forward_func=model, top=TOP), neuron_examples(graph, x, top=TOP)
    )


def test_a_loaded_graph_and_a_function_that_is_not_the_model_is_a_clear_error(cnn, tmp_path):
    model, _, x, graph = cnn
    path = tmp_path / "graph.json"
    graph.save(path)
    with pytest.raises(ValueError, match="knows its layers only by name"):
        neuron_examples(DependencyGraph.load(path), x, forward_func=lambda inputs: model(inputs))


def test_the_model_is_left_as_it_was(cnn):
    model, _, x, graph = cnn
    handle = model.fc1.register_forward_hook(lambda *_: None)
    model.conv2.train()
    try:
        training = {name: m.training for name, m in model.named_modules()}
        hooks = {name: dict(m._forward_hooks) for name, m in model.named_modules()}
        neuron_examples(graph, x, top=TOP)
        assert {name: m.training for name, m in model.named_modules()} == training
        assert {name: dict(m._forward_hooks) for name, m in model.named_modules()} == hooks
        assert all(p.grad is None for p in model.parameters())
        assert torch.is_grad_enabled()
    finally:
        handle.remove()
        model.eval()


def test_a_masked_batch_and_a_bad_top_are_errors(mlp):
    _, _, x, graph = mlp
    with pytest.raises(ValueError, match="does not take masks"):
        neuron_examples(graph, [(x, torch.zeros(len(x)), torch.ones(len(x), 6, dtype=torch.long))])
    with pytest.raises(ValueError, match="top must be a positive integer"):
        neuron_examples(graph, x, top=0)


def output_of(model: nn.Module, layer: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        model(*inputs)
    finally:
        handle.remove()
    return captured[0]


def test_a_model_with_two_inputs_shows_and_projects_the_first():
    torch.manual_seed(4)
    model = TwoInputs().eval()
    image, vector = torch.randn(8, 1, 6, 6), torch.randn(8, 4)
    graph = StepwiseSensitivity(model, [model.conv, model.fc, model.out]).attribute(
        (image, vector), target=1, branching=2
    )
    found = find(graph, (image, vector), top=TOP)
    assert found.kind == "image"
    for running in found.tops:
        layer = dict(model.named_modules())[running.name]
        for row, neuron in enumerate(running.neurons.tolist()):
            example = int(running.indices[row, 0])
            inputs = (image[example, None].clone().requires_grad_(), vector[example, None])
            value = output_of(model, layer, inputs)[0, neuron].mean()
            (gradient,) = torch.autograd.grad(value, inputs[0])
            torch.testing.assert_close(found.patterns[f"{running.name}:{neuron}"], gradient[0, 0])
    stream = [((image[:5], vector[:5]),), ((image[5:], vector[5:]),)]
    assert_same_shown(
        neuron_examples(graph, stream, top=TOP), neuron_examples(graph, (image, vector), top=TOP)
    )
