"""StepwiseSensitivity from token ids: SSA takes no gradient with respect to the inputs,
so ids are read as they are. The reference is the same model called from its
embeddings (``model.from_embeddings``, the same modules and layer names) on
``model.embedding(ids)``."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import StepwiseSensitivity
from captum_ssa.graph import DependencyGraph
from captum_ssa.relevance import CaptumRelevance
from tests.behaviour import assert_same_snapshot, hooks_left, snapshot
from tests.models import TokenClassifier, token_classifier


def embedded(model: TokenClassifier, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model.embedding(ids)


def assert_same_graph(graph: DependencyGraph, expected: DependencyGraph) -> None:
    """The same kept neurons and edges, relevances equal to float64 rounding."""
    assert graph.layer_names == expected.layer_names
    assert graph.target == expected.target
    assert graph.metadata == expected.metadata
    names = graph.layer_names
    for name in names:
        assert torch.equal(graph.neurons(name), expected.neurons(name)), name
        torch.testing.assert_close(
            graph.relevance(name), expected.relevance(name), atol=1e-10, rtol=0
        )
    for upper, lower in zip(names[1:], names[:-1]):
        assert torch.equal(graph.edges(upper, lower), expected.edges(upper, lower))
        torch.testing.assert_close(
            graph.relevance_matrix(upper, lower),
            expected.relevance_matrix(upper, lower),
            atol=1e-10,
            rtol=0,
        )


@pytest.mark.parametrize(
    "relevance", ["gradient", "gradient_x_activation", "activation", "gradients"]
)
@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
def test_a_graph_from_ids_equals_the_graph_from_the_embeddings(relevance, attention):
    model, ids, _ = token_classifier(attention=attention)
    layers = [model.fc1, model.fc2, model.head]
    graph = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(
        ids, target=1, relevance=relevance, mode="local", percentile=40
    )
    expected = StepwiseSensitivity(model.from_embeddings, layers, neuron_dim=-1).attribute(
        embedded(model, ids), target=1, relevance=relevance, mode="local", percentile=40
    )
    assert_same_graph(graph, expected)
    assert len(graph.neurons("fc1")) > 0


def test_a_captum_relevance_from_ids_equals_the_embeddings():
    model, ids, _ = token_classifier(attention=True)
    layers = [model.fc1, model.fc2, model.head]
    relevance = CaptumRelevance(LayerGradientXActivation)
    graph = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(
        ids, target=2, relevance=relevance
    )
    expected = StepwiseSensitivity(model.from_embeddings, layers, neuron_dim=-1).attribute(
        embedded(model, ids), target=2, relevance=relevance
    )
    assert_same_graph(graph, expected)


def test_a_frozen_model_gives_the_same_graph_and_stays_frozen():
    # token ids into a model whose parameters do not require grad: no layer output is
    # in autograd until SSA puts it there
    model, ids, _ = token_classifier(attention=True)
    layers = [model.fc1, model.fc2, model.head]
    expected = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(ids, target=0)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for relevance in ("gradient", CaptumRelevance(LayerGradientXActivation)):
        graph = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(
            ids, target=0, relevance=relevance
        )
        if relevance == "gradient":
            assert_same_graph(graph, expected)
        assert len(graph.neurons("fc2")) > 0
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_streams_of_id_batches_equal_one_batch():
    model, ids, types = token_classifier(attention=True)
    layers = [model.fc1, model.fc2, model.head]
    ssa = StepwiseSensitivity(model, layers, neuron_dim=-1)
    whole = ssa.attribute((ids, types), target=1)
    # a batch is (inputs, labels): the two-tensor inputs are a tuple inside it
    in_batches = ssa.attribute([((ids[:3], types[:3]),), ((ids[3:], types[3:]),)], target=1)
    loader = DataLoader(TensorDataset(ids, types), batch_size=4)
    from_loader = ssa.attribute((((i, t),) for i, t in loader), target=1)
    assert_same_graph(in_batches, whole)
    assert_same_graph(from_loader, whole)


def test_class_graphs_from_ids_equal_the_embeddings():
    model, ids, _ = token_classifier(attention=False)
    labels = model(ids).argmax(1)
    layers = [model.fc1, model.fc2, model.head]
    ssa = StepwiseSensitivity(model, layers, neuron_dim=-1)
    reference = StepwiseSensitivity(model.from_embeddings, layers, neuron_dim=-1)
    graphs = ssa.class_graphs(ids, labels)
    expected = reference.class_graphs(embedded(model, ids), labels)
    assert sorted(graphs) == sorted(expected) == sorted(labels.unique().tolist())
    assert len(graphs) >= 2
    for label, graph in graphs.items():
        assert_same_graph(graph, expected[label])
    loader = DataLoader(TensorDataset(ids, labels), batch_size=3)
    streamed = ssa.class_graphs(loader)
    for label, graph in streamed.items():
        assert_same_graph(graph, expected[label])


def test_ids_leave_the_model_as_it_was():
    model, ids, _ = token_classifier(attention=True)
    model.fc1.weight.grad = torch.randn_like(model.fc1.weight)
    model.head.bias.requires_grad_(False)
    model.train()
    before = snapshot(model)
    StepwiseSensitivity(model, [model.fc1, model.fc2, model.head], neuron_dim=-1).attribute(
        ids, target=1
    )
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match="did not run"):
        StepwiseSensitivity(model, [model.type_embedding, model.fc1], neuron_dim=-1).attribute(
            ids, top_neurons=[0]
        )
    assert hooks_left(model) == 0
    assert_same_snapshot(before, snapshot(model))
