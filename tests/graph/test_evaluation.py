"""Graph evaluation: masked classifier, ensemble, ablation gold standard, Spearman rho."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_ssa.graph import DependencyGraph
from captum_ssa.graph.evaluation import (
    ClassRates,
    GraphEvaluation,
    ablation_importance,
    class_rates,
    ensemble_predict,
    evaluate_ensemble,
    evaluate_graph,
    spearman_agreement,
)
from tests.models import build


def balanced_model(name: str) -> tuple[nn.Module, dict[str, nn.Module], Tensor, Tensor]:
    """A zoo model whose predictions spread over the classes, inputs, and noisy labels."""
    model, layers, shape = build(name)
    generator = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(48, *shape, generator=generator)
    last = list(layers.values())[-1]
    with torch.no_grad():
        last.bias -= model(x).mean(0)  # centre the logits so every class is predicted
        labels = model(x).argmax(1)
    flipped = torch.rand(len(x), generator=generator) < 0.3
    labels[flipped] = torch.randint(
        0, last.out_features, (int(flipped.sum()),), generator=generator
    )
    return model, layers, x, labels


def graph_keeping(
    layers: dict[str, nn.Module], kept: dict[str, list[int]], target: Any
) -> DependencyGraph:
    names = list(layers)
    sizes = [
        m.out_features if isinstance(m, nn.Linear) else m.out_channels for m in layers.values()
    ]
    neurons = [torch.tensor(kept[name]) for name in names]
    return DependencyGraph(
        names,
        list(layers.values()),
        neurons,
        [torch.rand(size) for size in sizes],
        [torch.rand(len(neurons[i + 1]), sizes[i]) for i in range(len(names) - 1)],
        [torch.cartesian_prod(neurons[i], neurons[i + 1]) for i in range(len(names) - 1)],
        target=target,
    )


def pruned_copy(model: nn.Module, kept: dict[str, list[int]], hidden: list[str]) -> nn.Module:
    """The reference: a copy whose non-kept hidden units/channels have zero weights and bias."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name in hidden:
            module = modules[name]
            others = [k for k in range(module.weight.shape[0]) if k not in kept[name]]
            module.weight[others] = 0
            module.bias[others] = 0
    return pruned


def no_trace(model: nn.Module, parameters: list[Tensor]) -> bool:
    return all(not m._forward_hooks for m in model.modules()) and all(
        torch.equal(p, q) for p, q in zip(model.parameters(), parameters)
    )


CASES = {
    "mlp": {"fc1": [0, 3, 4, 7], "fc2": [1, 2, 6], "fc3": [2]},
    "cnn": {"conv1": [0, 2], "conv2": [1, 3, 4], "fc1": [0, 2, 5], "fc2": [1]},
    "residual": {"fc_in": [0, 1, 2, 3, 4, 5, 6], "block1": [1, 5], "block2": [0, 6], "fc_out": [0]},
}


@pytest.mark.parametrize("name", list(CASES))
def test_evaluate_graph_matches_a_pruned_copy(name: str) -> None:
    model, layers, x, labels = balanced_model(name)
    kept = CASES[name]
    target = kept[list(layers)[-1]][0]
    graph = graph_keeping(layers, kept, target)
    parameters = [p.detach().clone() for p in model.parameters()]

    result = evaluate_graph(model, graph, x, labels)

    pruned = pruned_copy(model, kept, list(layers)[:-1])
    with torch.no_grad():
        masked_predictions = pruned(x).argmax(1)
        plain_predictions = model(x).argmax(1)
    own = labels == target
    hidden = list(layers.values())[:-1]
    total = sum(m.weight.shape[0] for m in hidden)
    assert isinstance(result, GraphEvaluation)
    assert result.accuracy == pytest.approx((masked_predictions == labels).float().mean().item())
    assert result.true_positive_rate == pytest.approx(
        (masked_predictions[own] == target).float().mean().item()
    )
    assert result.kept_fraction == pytest.approx(
        sum(len(kept[n]) for n in list(layers)[:-1]) / total
    )
    assert result.model_accuracy == pytest.approx(
        (plain_predictions == labels).float().mean().item()
    )
    assert result.accuracy != result.model_accuracy or name == "residual"
    predicted = masked_predictions == target
    assert result.precision == pytest.approx(
        (labels[predicted] == target).float().mean().item() if predicted.any() else math.nan,
        nan_ok=True,
    )
    assert result.false_positive_rate == pytest.approx(predicted[~own].float().mean().item())
    assert result.predicted_fraction == pytest.approx(predicted.float().mean().item())
    assert no_trace(model, parameters)
    assert evaluate_graph(model, graph, x, labels, batch_size=5) == result


def test_evaluate_graph_without_target_and_with_several() -> None:
    model, layers, x, labels = balanced_model("mlp")
    everything = {"fc1": list(range(8)), "fc2": list(range(7)), "fc3": [0]}
    untargeted = evaluate_graph(model, graph_keeping(layers, everything, None), x, labels)
    assert untargeted.true_positive_rate is None
    assert untargeted.precision is None and untargeted.false_positive_rate is None
    assert untargeted.predicted_fraction is None
    assert untargeted.kept_fraction == 1.0
    assert untargeted.accuracy == untargeted.model_accuracy  # nothing masked
    several = evaluate_graph(model, graph_keeping(layers, everything, [0, 2]), x, labels)
    own = (labels == 0) | (labels == 2)
    with torch.no_grad():
        expected = (model(x).argmax(1)[own] == labels[own]).float().mean().item()
    assert several.true_positive_rate == pytest.approx(expected)
    with torch.no_grad():
        predictions = model(x).argmax(1)
    chosen = (predictions == 0) | (predictions == 2)
    assert several.precision == pytest.approx(
        (predictions[chosen] == labels[chosen]).float().mean().item()
    )
    assert several.false_positive_rate == pytest.approx(chosen[~own].float().mean().item())
    assert several.predicted_fraction == pytest.approx(chosen.float().mean().item())
    absent = evaluate_graph(
        model, graph_keeping(layers, everything, 1), x, torch.zeros_like(labels)
    )
    assert math.isnan(absent.true_positive_rate)  # type: ignore[arg-type]
    everyone = evaluate_graph(
        model, graph_keeping(layers, everything, 1), x, torch.ones_like(labels)
    )
    assert math.isnan(everyone.false_positive_rate)  # type: ignore[arg-type]


def plain_rates(predictions: list[int], labels: list[int], positive: set[int]) -> tuple:
    """Counted one input at a time."""
    tp = sum(p == y and y in positive for p, y in zip(predictions, labels))
    own = sum(y in positive for y in labels)
    chosen = sum(p in positive for p in predictions)
    hits = sum(p == y and p in positive for p, y in zip(predictions, labels))
    false = sum(p in positive and y not in positive for p, y in zip(predictions, labels))
    others = len(labels) - own
    return (
        tp / own if own else math.nan,
        hits / chosen if chosen else math.nan,
        false / others if others else math.nan,
        chosen / len(labels),
    )


@settings(max_examples=40, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=15),
    positive=st.sets(st.integers(0, 3), min_size=1, max_size=2),
)
def test_class_rates_match_counting_one_input_at_a_time(
    pairs: list[tuple[int, int]], positive: set[int]
) -> None:
    predictions = [p for p, _ in pairs]
    labels = [y for _, y in pairs]
    rates = class_rates(torch.tensor(predictions), torch.tensor(labels), sorted(positive))
    expected = plain_rates(predictions, labels, positive)
    assert rates == pytest.approx(expected, nan_ok=True)


def test_a_masked_network_predicting_its_class_for_everything_is_exposed() -> None:
    model, layers, x, labels = balanced_model("mlp")
    little = {"fc1": [0], "fc2": [0], "fc3": [2]}
    with torch.no_grad():
        layers["fc3"].bias[2] += 100.0  # with most hidden units off, the bias decides: 2
    result = evaluate_graph(model, graph_keeping(layers, little, 2), x, labels)
    assert result.true_positive_rate == 1.0
    assert result.predicted_fraction == 1.0 and result.false_positive_rate == 1.0
    assert result.precision == pytest.approx((labels == 2).float().mean().item())


def test_ensemble_predict_matches_pruned_copies() -> None:
    model, layers, x, _ = balanced_model("mlp")
    generator = torch.Generator().manual_seed(3)
    graphs = {}
    for label in range(4):
        kept = {
            name: sorted(torch.randperm(size, generator=generator)[: size // 2].tolist())
            for name, size in (("fc1", 8), ("fc2", 7))
        }
        kept["fc3"] = [label]
        graphs[label] = graph_keeping(layers, kept, label)
    parameters = [p.detach().clone() for p in model.parameters()]

    predictions = ensemble_predict(model, graphs, x)

    with torch.no_grad():
        scores = torch.stack(
            [
                pruned_copy(model, {n: g.neurons(n).tolist() for n in layers}, ["fc1", "fc2"])(x)[
                    :, label
                ]
                for label, g in graphs.items()
            ],
            1,
        )
    assert torch.equal(predictions, scores.argmax(1))
    assert no_trace(model, parameters)
    # classes are the mapping's keys, not positions
    subset = ensemble_predict(model, {3: graphs[3], 1: graphs[1]}, x, batch_size=7)
    assert torch.equal(subset, torch.tensor([3, 1])[scores[:, [3, 1]].argmax(1)])
    with pytest.raises(ValueError, match="empty"):
        ensemble_predict(model, {}, x)

    _, _, _, labels = balanced_model("mlp")
    report = evaluate_ensemble(model, graphs, x, labels, batch_size=9)
    assert report.accuracy == pytest.approx((predictions == labels).float().mean().item())
    with torch.no_grad():
        plain = model(x).argmax(1)
    assert report.model_accuracy == pytest.approx((plain == labels).float().mean().item())
    assert sorted(report.classes) == [0, 1, 2, 3]
    for label, rates in report.classes.items():
        assert isinstance(rates, ClassRates)
        expected = plain_rates(predictions.tolist(), labels.tolist(), {label})
        assert tuple(rates) == pytest.approx(expected, nan_ok=True)
    assert sum(rates.predicted_fraction for rates in report.classes.values()) == pytest.approx(1)


def reference_ablation(model: nn.Module, layer_name: str, x: Tensor, labels: Tensor) -> Tensor:
    """One pruned copy and one forward pass per neuron: the gold standard, plainly."""
    with torch.no_grad():
        base = (model(x).argmax(1) == labels).float().mean()
        module = dict(model.named_modules())[layer_name]
        drops = []
        for neuron in range(module.weight.shape[0]):
            pruned = copy.deepcopy(model)
            target = dict(pruned.named_modules())[layer_name]
            target.weight[neuron] = 0
            target.bias[neuron] = 0
            drops.append(base - (pruned(x).argmax(1) == labels).float().mean())
    return torch.stack(drops)


@pytest.mark.parametrize(
    ("name", "layer", "batch_size"),
    [
        ("mlp", "fc1", None),
        ("mlp", "fc2", 20),
        ("cnn", "conv1", None),
        ("cnn", "conv2", 100),
        ("cnn", "fc1", 7),
        ("residual", "block1", None),
    ],
)
def test_ablation_importance_matches_a_loop_over_pruned_copies(
    name: str, layer: str, batch_size: Any
) -> None:
    model, layers, x, labels = balanced_model(name)
    parameters = [p.detach().clone() for p in model.parameters()]
    importance = ablation_importance(model, layer, x, labels, batch_size=batch_size)
    expected = reference_ablation(model, layer, x, labels)
    assert importance.shape == expected.shape
    assert torch.allclose(importance, expected.to(importance.dtype), atol=1e-6)
    assert importance.abs().sum() > 0
    assert no_trace(model, parameters)
    by_module = ablation_importance(model, layers[layer], x, labels, batch_size=batch_size)
    assert torch.equal(by_module, importance)


def reference_loss_ablation(model: nn.Module, layer_name: str, x: Tensor, labels: Tensor) -> Tensor:
    """The rise of the mean cross-entropy, one pruned copy per neuron."""
    with torch.no_grad():
        base = nn.functional.cross_entropy(model(x).double(), labels)
        module = dict(model.named_modules())[layer_name]
        rises = []
        for neuron in range(module.weight.shape[0]):
            pruned = copy.deepcopy(model)
            target = dict(pruned.named_modules())[layer_name]
            target.weight[neuron] = 0
            target.bias[neuron] = 0
            rises.append(nn.functional.cross_entropy(pruned(x).double(), labels) - base)
    return torch.stack(rises)


@pytest.mark.parametrize(
    ("name", "layer", "batch_size"),
    [("mlp", "fc1", None), ("mlp", "fc2", 5), ("cnn", "conv2", 30), ("residual", "block1", 64)],
)
def test_ablation_loss_matches_a_loop_over_pruned_copies(
    name: str, layer: str, batch_size: Any
) -> None:
    model, _, x, labels = balanced_model(name)
    importance = ablation_importance(model, layer, x, labels, batch_size, metric="loss")
    expected = reference_loss_ablation(model, layer, x, labels)
    assert torch.allclose(importance, expected.to(importance.dtype), atol=1e-5)
    assert len(importance.unique()) == len(importance)  # no ties, unlike accuracy


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
@pytest.mark.parametrize("batch_size", [1, 7, 48, 100])
def test_ablation_batch_size_bounds_the_rows_of_every_forward_pass(
    metric: str, batch_size: int
) -> None:
    model, _, x, labels = balanced_model("mlp")  # 48 examples
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: rows.append(len(args[0])))
    try:
        importance = ablation_importance(model, "fc2", x, labels, batch_size, metric=metric)
    finally:
        handle.remove()
    assert max(rows) <= batch_size
    unbounded = ablation_importance(model, "fc2", x, labels, metric=metric)
    assert torch.allclose(importance, unbounded, atol=1e-6)


def test_ablation_importance_with_inplace_relu_after_the_layer() -> None:
    # the zoo MLP's act2 (after fc2) is nn.ReLU(inplace=True)
    model, _, x, labels = balanced_model("mlp")
    assert model.act2.inplace
    assert torch.allclose(
        ablation_importance(model, "fc2", x, labels),
        reference_ablation(model, "fc2", x, labels),
        atol=1e-6,
    )


def test_ablation_importance_errors() -> None:
    model, _, x, labels = balanced_model("mlp")
    with pytest.raises(ValueError, match="no layer named"):
        ablation_importance(model, "fc9", x, labels)
    with pytest.raises(ValueError, match="not part of the model"):
        ablation_importance(model, nn.Linear(2, 2), x, labels)
    with pytest.raises(ValueError, match="labels"):
        ablation_importance(model, "fc1", x, labels[:3])
    with pytest.raises(ValueError, match="metric must be one of"):
        ablation_importance(model, "fc1", x, labels, metric="f1")


def test_ablation_importance_warns_in_training_mode_with_dropout() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    with pytest.warns(UserWarning, match="training mode"):
        ablation_importance(model, "0", torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    assert model.training


def average_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def reference_spearman(first: list[float], second: list[float]) -> float:
    """Pearson correlation of the average ranks."""
    a, b = average_ranks(first), average_ranks(second)
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    spread = math.sqrt(sum((x - mean_a) ** 2 for x in a) * sum((y - mean_b) ** 2 for y in b))
    return covariance / spread


@settings(max_examples=25, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(-5, 5), st.integers(-5, 5)), min_size=3, max_size=12))
def test_spearman_agreement_matches_the_rank_formula(pairs: list[tuple[int, int]]) -> None:
    first = [float(a) for a, _ in pairs]
    second = [float(b) for _, b in pairs]
    rho = spearman_agreement(torch.tensor(first), torch.tensor(second))
    if len(set(first)) == 1 or len(set(second)) == 1:
        assert math.isnan(rho)
    else:
        assert rho == pytest.approx(reference_spearman(first, second), abs=1e-9)


def test_spearman_agreement_known_answers() -> None:
    increasing = torch.arange(6.0)
    assert spearman_agreement(increasing, increasing**3) == pytest.approx(1.0)
    assert spearman_agreement(increasing, -increasing) == pytest.approx(-1.0)
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); ranks (1 2 3 4) vs (2 1 4 3)
    rho = spearman_agreement(torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 1, 4, 3]))
    assert rho == pytest.approx(1 - 6 * 4 / (4 * 15))
    with pytest.raises(ValueError, match="must score the same neurons"):
        spearman_agreement(torch.rand(3), torch.rand(4))


def test_error_messages_name_the_argument_and_what_was_expected() -> None:
    model, layers, x, labels = balanced_model("mlp")
    graph = graph_keeping(layers, CASES["mlp"], 2)
    with pytest.raises(ValueError, match="labels must hold one class per input: expected"):
        evaluate_graph(model, graph, x, labels[:-1])
    with pytest.raises(ValueError, match="inputs must share one non-zero batch size"):
        evaluate_graph(model, graph, x[:0], labels[:0])
    with pytest.raises(TypeError, match="inputs must be a tensor or a tuple of tensors, got list"):
        evaluate_graph(model, graph, [x], labels)  # type: ignore[arg-type]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            evaluate_graph(model, graph, x, labels, batch_size=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            ablation_importance(model, "fc1", x, labels, batch_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_graphs is empty: expected one graph"):
        ensemble_predict(model, {}, x)
    with pytest.raises(ValueError, match="layer must be a module of the model or its name"):
        ablation_importance(model, "fc9", x, labels)
    with pytest.raises(ValueError, match="importance and relevance must score the same neurons"):
        spearman_agreement(torch.arange(3.0), torch.arange(4.0))
    numpy_batch = evaluate_graph(model, graph, x, labels, batch_size=np.int64(5))
    assert numpy_batch == evaluate_graph(model, graph, x, labels, batch_size=5)
