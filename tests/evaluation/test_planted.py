"""Planted circuits: the generator's circuits are what it says, the scorer against hand
counts, and SSA's local mode recovering a low-noise circuit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import Tensor, nn

from captum_ssa import DependencyGraph, StepwiseSensitivity
from captum_ssa.evaluation import (
    PlantedNetwork,
    layer_attribution_graph,
    missed_neurons,
    planted_network,
    score_graph,
)

ARCHITECTURES = ["mlp", "cnn"]


@contextmanager
def zeroed(planted: PlantedNetwork, units: dict[str, list[int]]) -> Iterator[None]:
    """The listed units of each hidden layer output zero (forward hooks)."""

    def hook_for(indices: list[int]):
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            output = output.clone()
            output[:, indices] = 0
            return output

        return hook

    handles = [
        getattr(planted.model, name).register_forward_hook(hook_for(indices))
        for name, indices in units.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_ablating_a_class_circuit_kills_its_logit_and_other_units_barely_matter(architecture):
    planted = planted_network(architecture, seed=1)
    x, y = planted.inputs(16, seed=1)
    assert (planted.model(x).argmax(1) == y).all()  # the circuits classify their examples
    hidden = planted.layer_names[:-1]
    for label in planted.classes:
        own = x[y == label]
        logit = planted.model(own)[:, label]
        circuit = {name: planted.planted_neurons[label][name] for name in hidden}
        every_planted = {
            index for truth in planted.planted_neurons.values() for index in truth[hidden[0]]
        }
        width = planted.model.hidden1.weight.shape[0]
        others = [index for index in range(width) if index not in every_planted][:3]
        with zeroed(planted, circuit):
            ablated = planted.model(own)[:, label]
        with zeroed(planted, dict.fromkeys(hidden, others)):
            unplanted = planted.model(own)[:, label]
        assert (ablated.abs() < 0.05 * logit).all(), (label, ablated, logit)
        assert ((unplanted - logit).abs() < 0.05 * logit).all(), (label, unplanted, logit)


def test_the_planted_sets_follow_fan_in_overlap_and_depth():
    planted = planted_network("mlp", classes=3, fan_in=4, depth=3, overlap=0.5, seed=0)
    assert planted.layer_names == ["relu1", "relu2", "relu3", "logits"]
    # consecutive classes share round(0.5 * 4) = 2 units, in every layer and in the inputs
    assert planted.input_features == {0: [0, 1, 2, 3], 1: [2, 3, 4, 5], 2: [4, 5, 6, 7]}
    assert planted.planted_neurons[1] == {
        "relu1": [2, 3, 4, 5],
        "relu2": [2, 3, 4, 5],
        "relu3": [2, 3, 4, 5],
        "logits": [1],
    }
    # fan-in 4 between hidden layers (4 x 4 per pair, two pairs), 4 into the logit
    assert len(planted.planted_edges[1]) == 2 * 16 + 4
    assert (("relu3", 5), ("logits", 1)) in planted.planted_edges[1]
    weight = planted.model.hidden2.weight
    assert (weight[2:6, 2:6] == 1).all()
    noise = weight.clone()
    for lower in planted.planted_neurons.values():
        rows = torch.tensor(lower["relu1"])
        noise[rows[:, None], rows[None, :]] = 0
    assert noise.abs().max() < 0.2  # N(0, 0.03²) noise everywhere else


def test_planted_sets_that_do_not_fit_and_bad_arguments_are_errors():
    with pytest.raises(ValueError, match="need 40 units"):
        planted_network(classes=10, fan_in=4, width=32)
    with pytest.raises(ValueError, match="overlap"):
        planted_network(overlap=1.0)
    with pytest.raises(ValueError, match="architecture"):
        planted_network("rnn")


def hand_graph(planted: PlantedNetwork) -> DependencyGraph:
    """relu1 keeps {0, 1, 5}, relu2 keeps {0, 2}; edges chosen by hand (local-style)."""
    sizes = [32, 32, 4]
    neurons = [torch.tensor([0, 1, 5]), torch.tensor([0, 2]), torch.tensor([0])]
    edges = [torch.tensor([[0, 0], [5, 0], [1, 2]]), torch.tensor([[0, 0], [2, 0]])]
    relevances = [torch.rand(size) for size in sizes]
    matrices = [torch.rand(2, 32), torch.rand(1, 32)]
    return DependencyGraph(
        planted.layer_names, planted.layers, neurons, relevances, matrices, edges, target=0
    )


def test_the_scores_equal_hand_counts():
    planted = planted_network("mlp", classes=4, fan_in=3, depth=2, seed=0)
    # class 0's circuit: relu1 {0, 1, 2}, relu2 {0, 1, 2}, logit 0
    score = score_graph(hand_graph(planted), planted, 0)
    # neurons: kept {r1:0, r1:1, r1:5, r2:0, r2:2}, planted 6; hits r1:0, r1:1, r2:0, r2:2
    assert score.neuron_precision == pytest.approx(4 / 5)
    assert score.neuron_recall == pytest.approx(4 / 6)
    assert score.neuron_f1 == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    # edges: 5 kept; planted 9 + 3; hits r1:0->r2:0, r1:1->r2:2, r2:0->out, r2:2->out
    assert score.edge_precision == pytest.approx(4 / 5)
    assert score.edge_recall == pytest.approx(4 / 12)
    assert score.per_layer["relu1"] == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert score.per_layer["relu2"] == pytest.approx((1.0, 2 / 3, 0.8))
    assert missed_neurons(hand_graph(planted), planted, 0) == [("relu1", 2), ("relu2", 1)]
    # against class 3's circuit (units 9..11) nothing is a hit: every score is 0
    other = score_graph(hand_graph(planted), planted, 3)
    assert (other.neuron_precision, other.neuron_recall, other.neuron_f1) == (0, 0, 0)
    assert other.edge_f1 == 0


def test_a_graph_over_other_layers_is_refused():
    planted = planted_network("mlp", depth=3, seed=0)
    shallow = planted_network("mlp", depth=2, seed=0)
    with pytest.raises(ValueError, match="not the planted network's"):
        score_graph(hand_graph(shallow), planted, 0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_local_mode_with_branching_the_fan_in_recovers_every_planted_neuron(architecture):
    planted = planted_network(architecture, fan_in=3, depth=3, noise=0.03, seed=2)
    x, y = planted.inputs(16, seed=2)
    ssa = StepwiseSensitivity(planted.model, planted.layers)
    graphs = ssa.class_graphs(x, y, mode="local", branching=3)
    for label in planted.classes:
        score = score_graph(graphs[label], planted, label)
        assert missed_neurons(graphs[label], planted, label) == []
        # branching = fan-in keeps exactly the circuit: nothing else either
        assert (score.neuron_precision, score.edge_precision, score.edge_recall) == (1, 1, 1)


def test_a_captum_layer_method_graph_is_scored_like_any_graph():
    planted = planted_network("mlp", seed=0)
    x, y = planted.inputs(8)
    graph = layer_attribution_graph(planted, x[y == 1], 1, LayerGradientXActivation, 3)
    assert graph.metadata["relevance"] == "LayerGradientXActivation"
    assert graph.metadata["mode"] == "local" and graph.metadata["branching"] == 3
    assert all(len(graph.neurons(name)) == 3 for name in planted.layer_names[:-1])
    assert score_graph(graph, planted, 1).neuron_recall == 1.0
