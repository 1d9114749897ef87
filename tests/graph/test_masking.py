"""Running a model as its dependency graph."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_ssa._utils.hooks import run_and_capture
from captum_ssa.graph import DependencyGraph
from tests.graph_helpers import KEPT, build_cnn, make_graph
from tests.models import build


@pytest.fixture
def cnn() -> tuple[nn.Module, dict[str, nn.Module]]:
    return build_cnn()


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
