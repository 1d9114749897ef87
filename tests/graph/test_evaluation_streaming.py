"""The graph evaluations over a stream of (inputs, labels) batches: the one-batch results."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa.graph.ablation import ablation_layout
from captum_ssa.graph.evaluation import (
    ablation_importance,
    ensemble_predict,
    evaluate_ensemble,
    evaluate_graph,
)
from tests.graph.test_evaluation import CASES, balanced_model, graph_keeping


def uneven_loader(x: Tensor, labels: Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, labels), batch_size=13)  # 48 = 13 + 13 + 13 + 9


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_evaluate_graph_over_a_loader_equals_one_batch(name: str) -> None:
    model, layers, x, labels = balanced_model(name)
    graph = graph_keeping(layers, CASES[name], CASES[name][list(layers)[-1]][0])
    one_batch = evaluate_graph(model, graph, x, labels)
    assert evaluate_graph(model, graph, uneven_loader(x, labels)) == one_batch
    assert evaluate_graph(model, graph, uneven_loader(x, labels), batch_size=4) == one_batch
    pairs = [(x[:30], labels[:30]), (x[30:], labels[30:])]  # any iterable of pairs
    assert evaluate_graph(model, graph, pairs) == one_batch


def test_evaluate_ensemble_and_predictions_over_a_loader_equal_one_batch() -> None:
    model, layers, x, labels = balanced_model("mlp")
    graphs = {c: graph_keeping(layers, {**CASES["mlp"], "fc3": [c]}, c) for c in range(4)}
    assert evaluate_ensemble(model, graphs, uneven_loader(x, labels)) == evaluate_ensemble(
        model, graphs, x, labels
    )
    streamed = ensemble_predict(model, graphs, uneven_loader(x, labels), batch_size=5)
    assert torch.equal(streamed, ensemble_predict(model, graphs, x))
    tensors_only = ensemble_predict(model, graphs, [x[:20], x[20:]])
    assert torch.equal(tensors_only, streamed)


def plain_ablation(model: nn.Module, layer: str, x: Tensor, labels: Tensor, metric: str) -> Tensor:
    """Zero one neuron with a hook, run all examples, one neuron after the other."""
    module = dict(model.named_modules())[layer]

    def score(outputs: Tensor) -> Tensor:
        if metric == "accuracy":
            return (outputs.argmax(1) != labels).double().mean()
        return nn.functional.cross_entropy(outputs.double(), labels)

    with torch.no_grad():
        base = score(model(x))
        rises = []
        for neuron in range(module(torch.zeros(1, *module_input_shape(model, layer, x))).shape[1]):

            def zero(_m: nn.Module, _a: object, out: Tensor, k: int = neuron) -> Tensor:
                out = out.clone()
                out[:, k] = 0
                return out

            handle = module.register_forward_hook(zero)
            try:
                rises.append(score(model(x)) - base)
            finally:
                handle.remove()
    return torch.stack(rises).float()


def module_input_shape(model: nn.Module, layer: str, x: Tensor) -> tuple[int, ...]:
    seen: list[tuple[int, ...]] = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_pre_hook(lambda _m, a: seen.append(tuple(a[0].shape[1:])))
    with torch.no_grad():
        model(x[:1])
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
@pytest.mark.parametrize(("name", "layer"), [("mlp", "fc1"), ("cnn", "conv2")])
def test_ablation_over_a_loader_equals_one_batch_and_a_plain_loop(
    name: str, layer: str, metric: str
) -> None:
    model, _, x, labels = balanced_model(name)
    one_batch = ablation_importance(model, layer, x, labels, metric=metric)
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
    try:
        streamed = ablation_importance(
            model, layer, uneven_loader(x, labels), batch_size=16, metric=metric
        )
    finally:
        handle.remove()
    assert max(rows) <= 16
    expected = plain_ablation(model, layer, x, labels, metric)
    if metric == "accuracy":  # counts: exactly equal
        assert torch.equal(streamed, one_batch)
    assert torch.allclose(streamed, one_batch, rtol=1e-6, atol=1e-7)
    assert torch.allclose(one_batch, expected, atol=1e-6)


def test_ablation_groups_neurons_when_examples_outnumber_the_rows() -> None:
    model, _, x, labels = balanced_model("mlp")  # 48 examples, fc1 has 8 neurons
    seen: list[int] = []
    handle = model.fc1.register_forward_hook(lambda _m, _a, out: seen.append(len(out)))
    try:
        ablation_importance(model, "fc1", x, labels, batch_size=16)
    finally:
        handle.remove()
    ablated = seen[1 + 3 :]  # after the width probe and the 3 unablated pieces of 16
    # as few passes as 48 x 8 ablated rows allow at 16 rows each, every one full
    assert ablated == [16] * (48 * 8 // 16)
    per_pass, group = ablation_layout(48, 8, 16)
    assert group > 1 and per_pass * group == 16  # several neurons per pass
    assert ablation_layout(20000, 100, 4096)[1] > 1
    for examples, neurons, rows in [(20000, 100, 4096), (5, 3, 100), (7, 1, 2), (9, 4, 3)]:
        per_pass, group = ablation_layout(examples, neurons, rows)
        assert per_pass * group <= rows and 1 <= group <= neurons and per_pass <= examples
        passes = math.ceil(examples / per_pass) * math.ceil(neurons / group)
        one_neuron_per_pass = math.ceil(examples / min(examples, rows)) * neurons
        assert passes <= one_neuron_per_pass


def test_stream_errors_name_the_problem() -> None:
    model, layers, x, _ = balanced_model("mlp")
    graph = graph_keeping(layers, CASES["mlp"], 2)
    with pytest.raises(ValueError, match="batch 0 of inputs has no labels"):
        evaluate_graph(model, graph, [x])
    with pytest.raises(ValueError, match="labels is missing"):
        evaluate_graph(model, graph, x)
    with pytest.raises(ValueError, match="holds no batches"):
        evaluate_graph(model, graph, [])
    with pytest.raises(ValueError, match="holds no batches"):
        ablation_importance(model, "fc1", [])
    mask = torch.ones(x.shape, dtype=torch.long)  # not dropped silently: refused
    labels = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(ValueError, match="batch 0 of inputs carries a mask"):
        evaluate_graph(model, graph, [(x, labels, mask)])


def test_tensor_inputs_need_not_be_floating_point() -> None:
    # token ids into an embedding: no gradient is taken, so integers are fine
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 5), nn.Linear(5, 3))
    tokens = torch.randint(0, 10, (20, 3), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(1))
    for metric in ("accuracy", "loss"):
        importance = ablation_importance(model, "2", tokens, labels, batch_size=8, metric=metric)
        expected = plain_ablation(model, "2", tokens, labels, metric)
        assert torch.allclose(importance, expected, atol=1e-6)
