"""Step III's relevance-weighted aggregation (an extension beyond the paper):
against a plain loop, through StepwiseSensitivity, and on planted circuits."""

from __future__ import annotations

import pytest
import torch

from captum_ssa import StepwiseSensitivity
from captum_ssa._core.stepwise_sensitivity import aggregate_upper_neurons
from captum_ssa.evaluation import planted_network, score_graph
from tests.stepwise_sensitivity.references import (
    CASES,
    OPTIONS,
    assert_matches_reference,
    case,
    reference_graph,
    starting_set,
    weighted_upper_aggregation,
)

WEIGHTED_OPTIONS = {
    **{name: OPTIONS[name] for name in ("mean_global", "tukey_global_capped")},
    "mean_local_top": {"aggregation": "mean", "mode": "local", "branching": 2},
}


def test_the_weighted_vector_equals_the_plain_loop():
    torch.manual_seed(0)
    matrix = torch.rand(5, 7, dtype=torch.float64)
    weights = torch.rand(5, dtype=torch.float64)
    expected = weighted_upper_aggregation(matrix.numpy(), weights.tolist())
    torch.testing.assert_close(aggregate_upper_neurons(matrix, weights).numpy(), expected)
    # equal weights are the paper's mean; a neuron of weight zero does not count
    torch.testing.assert_close(
        aggregate_upper_neurons(matrix, torch.full((5,), 2.0, dtype=torch.float64)),
        matrix.mean(0),
    )
    zero_last = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(aggregate_upper_neurons(matrix, zero_last), matrix[:4].mean(0))


def test_all_zero_weights_fall_back_to_the_mean_and_a_wrong_shape_is_an_error():
    matrix = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    torch.testing.assert_close(aggregate_upper_neurons(matrix, torch.zeros(2)), matrix.mean(0))
    with pytest.raises(ValueError, match="one value per row"):
        aggregate_upper_neurons(matrix, torch.ones(3))


@pytest.mark.filterwarnings("ignore:no neuron of")
@pytest.mark.parametrize("options", WEIGHTED_OPTIONS)
@pytest.mark.parametrize(("model_name", "relevance"), CASES)
def test_the_weighted_graph_equals_the_plain_reference(model_name, relevance, options):
    model, layers, shape, start = case(model_name)
    torch.manual_seed(7)
    x = torch.randn(4, *shape)
    kwargs = {"relevance": relevance, **WEIGHTED_OPTIONS[options]}
    graph = StepwiseSensitivity(model, layers).attribute(
        x, **start, **kwargs, upper_aggregation="relevance_weighted"
    )
    expected = reference_graph(
        model,
        layers,
        x,
        starting_set(model, layers, start),
        **kwargs,
        upper_aggregation="relevance_weighted",
    )
    assert_matches_reference(graph, expected)
    assert graph.metadata["upper_aggregation"] == "relevance_weighted"


def test_the_default_is_the_papers_mean_and_is_recorded():
    model, layers, shape, start = case("mlp")
    torch.manual_seed(7)
    x = torch.randn(6, *shape)
    ssa = StepwiseSensitivity(model, layers)
    graph = ssa.attribute(x, **start)
    assert graph.metadata["upper_aggregation"] == "mean"
    assert graph == ssa.attribute(x, **start, upper_aggregation="mean")
    assert_matches_reference(
        graph, reference_graph(model, layers, x, starting_set(model, layers, start))
    )


def test_an_unknown_upper_aggregation_is_refused_before_any_forward_pass():
    model, layers, shape, start = case("mlp")
    with pytest.raises(ValueError, match="upper_aggregation must be one of"):
        StepwiseSensitivity(model, layers).attribute(
            torch.randn(2, *shape), **start, upper_aggregation="max"
        )


def test_class_graphs_over_a_stream_take_the_option():
    planted = planted_network("mlp", seed=0)
    x, y = planted.inputs(8)
    ssa = StepwiseSensitivity(planted.model, planted.layers)
    loader = [(x[:16], y[:16]), (x[16:], y[16:])]
    streamed = ssa.class_graphs(loader, upper_aggregation="relevance_weighted")
    in_memory = ssa.class_graphs(x, y, upper_aggregation="relevance_weighted")
    for label in planted.classes:
        assert streamed[label].metadata["upper_aggregation"] == "relevance_weighted"
        assert (
            streamed[label].neurons("relu1").tolist() == in_memory[label].neurons("relu1").tolist()
        )


# A CNN whose noise weights (σ = 0.3) are strong enough that the paper's mean loses planted
# channels in global mode: the noise channels kept at the upper layer's 50th percentile
# count as much as the planted ones.
LOSSY = {"architecture": "cnn", "classes": 4, "fan_in": 3, "depth": 2, "noise": 0.3}


@pytest.mark.parametrize("relevance", ["weight", "gradient"])
def test_on_planted_circuits_the_weighted_rule_recovers_what_the_mean_loses(relevance):
    planted = planted_network(**LOSSY, features=32, seed=0)
    x, y = planted.inputs(16, seed=0)
    ssa = StepwiseSensitivity(planted.model, planted.layers)
    recall = {}
    for rule in ("mean", "relevance_weighted"):
        graphs = ssa.class_graphs(x, y, relevance=relevance, upper_aggregation=rule)
        scores = [score_graph(graphs[label], planted, label) for label in planted.classes]
        recall[rule] = sum(score.neuron_recall for score in scores) / len(scores)
    # the configuration is one where the paper's rule does lose planted neurons ...
    assert recall["mean"] < 0.9, recall
    # ... and the relevance-weighted rule recovers more of them
    assert recall["relevance_weighted"] > recall["mean"] + 0.1, recall
