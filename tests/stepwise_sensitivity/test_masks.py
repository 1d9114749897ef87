"""StepwiseSensitivity with masks: a neuron's activity is its mean over the real tokens,
so padded examples with their mask give the graph of the unpadded examples.
References: the same examples unpadded, one per batch, and a plain loop over
examples and upper neurons with one backward pass each."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients
from torch import Tensor, nn

from captum_ssa import StepwiseSensitivity, memory_budget
from captum_ssa.graph import DependencyGraph
from captum_ssa.relevance import CaptumRelevance
from tests.behaviour import assert_same_snapshot, snapshot
from tests.models import MaskedTransformer, masked_transformer, padded, sequences

TOLERANCE = {"atol": 1e-9, "rtol": 0}  # float64: equal up to rounding (the spec asks 1e-6)


def layers_of(model: MaskedTransformer) -> list[nn.Module]:
    return [model.fc1, model.fc2, model.head]


def assert_same_graph(graph: DependencyGraph, expected: DependencyGraph) -> None:
    """The same kept neurons and edges, relevances and Step II matrices to rounding."""
    assert graph.layer_names == expected.layer_names and graph.target == expected.target
    names = graph.layer_names
    for name in names:
        assert torch.equal(graph.neurons(name), expected.neurons(name)), name
        torch.testing.assert_close(graph.relevance(name), expected.relevance(name), **TOLERANCE)
    for upper, lower in zip(names[1:], names[:-1]):
        assert torch.equal(graph.edges(upper, lower), expected.edges(upper, lower))
        torch.testing.assert_close(
            graph.relevance_matrix(upper, lower),
            expected.relevance_matrix(upper, lower),
            **TOLERANCE,
        )


def unpadded_stream(examples: list[Tensor], labels: Any = None) -> list[tuple[Any, ...]]:
    """One unpadded example per batch: no mask, every position a real token."""
    if labels is None:
        return [(example,) for example in examples]
    return [(example, labels[row : row + 1]) for row, example in enumerate(examples)]


OPTIONS = {
    "gradient": {"relevance": "gradient"},
    "gradient_x_activation_local": {
        "relevance": "gradient_x_activation",
        "mode": "local",
        "branching": 3,
    },
    "activation_tukey": {"relevance": "activation", "aggregation": "tukey", "percentile": 30},
    "activations_abs": {"relevance": "activations_abs"},
    "gradients_signed_free": {"relevance": "gradients", "percentile": 0},
    "signed_gradient": {"relevance": "gradient", "absolute": False, "percentile": 0},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_padded_examples_with_their_mask_give_the_graph_of_the_unpadded_ones(options, left):
    model, examples = masked_transformer(), sequences()
    ids, mask = padded(examples, 8, left=left)
    ssa = StepwiseSensitivity(model, layers_of(model), neuron_dim=-1)
    graph = ssa.attribute(ids, target=1, mask=mask, **options)
    expected = ssa.attribute(unpadded_stream(examples), target=1, **options)
    assert_same_graph(graph, expected)
    assert len(graph.neurons("fc1")) > 0


def plain_matrix(
    model: MaskedTransformer,
    lower: nn.Module,
    upper: nn.Module,
    examples: list[Tensor],
    neurons: list[int],
) -> Tensor:
    """Step II's mean of ``mean_t |d a_n / d a_{k,t}|`` over the unpadded examples, with
    ``a_n`` the upper neuron's mean over the positions (its value for the logits)."""
    rows = []
    for neuron in neurons:
        per_example = []
        for example in examples:
            outputs: dict[str, Tensor] = {}
            handles = [
                layer.register_forward_hook(
                    lambda _m, _i, out, name=name, kept=outputs: kept.__setitem__(name, out)
                )
                for name, layer in (("lower", lower), ("upper", upper))
            ]
            model(example)
            for handle in handles:
                handle.remove()
            upper_output = outputs["upper"][0]
            activity = upper_output[neuron] if upper_output.dim() == 1 else upper_output[:, neuron]
            (gradient,) = torch.autograd.grad(activity.mean(), outputs["lower"])
            per_example.append(gradient[0].abs().mean(0))  # (positions, K) -> (K,)
        rows.append(torch.stack(per_example).mean(0))
    return torch.stack(rows)


def test_the_relevances_equal_a_plain_reference_on_the_unpadded_examples():
    model, examples = masked_transformer(), sequences()
    ids, mask = padded(examples, 9, left=True)
    graph = StepwiseSensitivity(model, layers_of(model), neuron_dim=-1).attribute(
        ids, target=2, mask=mask, percentile=0
    )
    top = plain_matrix(model, model.fc2, model.head, examples, [2])
    torch.testing.assert_close(graph.relevance_matrix("head", "fc2"), top, **TOLERANCE)
    kept = graph.neurons("fc2").tolist()
    assert len(kept) == 6  # percentile 0 keeps every relevant neuron
    below = plain_matrix(model, model.fc1, model.fc2, examples, kept)
    torch.testing.assert_close(graph.relevance_matrix("fc2", "fc1"), below, **TOLERANCE)


def test_without_the_mask_the_pads_change_the_graph():
    # the model itself leaves the pads out either way: the difference is SSA's means
    model, examples = masked_transformer(), sequences()
    ids, mask = padded(examples, 9)
    ssa = StepwiseSensitivity(model, layers_of(model), neuron_dim=-1)
    expected = ssa.attribute(unpadded_stream(examples), target=1, percentile=0)
    with pytest.warns(match="looks like an attention mask"):
        counted = ssa.attribute(ids, target=1, percentile=0, additional_forward_args=(mask,))
    difference = (counted.relevance("fc1") - expected.relevance("fc1")).abs().max()
    assert difference > 1e-3


def test_streams_of_batches_padded_to_different_lengths_equal_the_unpadded_examples():
    model, examples = masked_transformer(), sequences(count=9)
    labels = torch.arange(9) % 3  # classes to explain, the model's or not
    first, second = padded(examples[:4], 9, left=True), padded(examples[4:])
    batches = [(first[0], labels[:4], first[1]), (second[0], labels[4:], second[1])]
    collated = [{"input_ids": i, "attention_mask": m, "labels": y} for i, y, m in batches]
    ssa = StepwiseSensitivity(model, layers_of(model), neuron_dim=-1)
    expected = ssa.attribute(unpadded_stream(examples, labels), target="labels", mode="local")
    for stream in (batches, collated):
        assert_same_graph(ssa.attribute(stream, target="labels", mode="local"), expected)
    graphs = ssa.class_graphs(batches, branching=2)
    expected_graphs = ssa.class_graphs(unpadded_stream(examples, labels), branching=2)
    ids, mask = padded(examples)
    from_tensors = ssa.class_graphs(ids, labels, mask=mask, branching=2)
    assert sorted(graphs) == sorted(expected_graphs) == sorted(from_tensors)
    for label, graph in graphs.items():
        assert_same_graph(graph, expected_graphs[label])
        assert_same_graph(from_tensors[label], expected_graphs[label])


@pytest.mark.parametrize(
    "relevance",
    [
        CaptumRelevance(LayerGradientXActivation),
        CaptumRelevance(LayerIntegratedGradients, n_steps=6),
    ],
    ids=["gradient_x_activation", "integrated_gradients"],
)
def test_captum_relevances_leave_the_pads_out_too(relevance):
    # integrated gradients expands the batch over its steps: the mask goes with it
    model, examples = masked_transformer(), sequences(count=4)
    ids, mask = padded(examples, 7, left=True)
    ssa = StepwiseSensitivity(model, layers_of(model), neuron_dim=-1)
    graph = ssa.attribute(ids, target=0, mask=mask, relevance=relevance, percentile=0)
    expected = ssa.attribute(unpadded_stream(examples), target=0, relevance=relevance, percentile=0)
    assert_same_graph(graph, expected)


def test_the_model_receives_the_mask_before_the_additional_arguments():
    model, examples = masked_transformer(), sequences(count=4)
    ids, mask = padded(examples)
    calls = []

    def forward(ids: Tensor, mask: Tensor, scale: float) -> Tensor:
        calls.append((ids.shape, mask.shape, scale))
        return scale * model(ids, mask)

    layers = layers_of(model)
    before = snapshot(model)
    graph = StepwiseSensitivity(forward, layers, neuron_dim=-1).attribute(
        ids, target=1, mask=mask, additional_forward_args=(1.0,)
    )
    # every call (the memory budget's measurement on the first two and three examples
    # included) receives the mask of its own examples before the arguments
    assert calls and all(call == (call[0], call[0], 1.0) for call in calls)
    assert all(call[0][1:] == ids.shape[1:] for call in calls) and calls[2][0] == ids.shape
    expected = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(ids, target=1, mask=mask)
    for layer in layers:  # a plain function names no layer: compared by module
        assert torch.equal(graph.neurons(layer), expected.neurons(layer))
        torch.testing.assert_close(graph.relevance(layer), expected.relevance(layer), **TOLERANCE)
    assert_same_snapshot(before, snapshot(model))


def test_a_batch_split_by_the_memory_budget_splits_its_mask_with_it():
    model, examples = masked_transformer(), sequences()
    ids, mask = padded(examples, 8, left=True)
    pieces = []

    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        assert ids.shape == mask.shape
        pieces.append(len(ids))
        return model(ids, mask)

    layers = layers_of(model)
    expected = StepwiseSensitivity(model, layers, neuron_dim=-1).attribute(
        unpadded_stream(examples), target=1, mode="local", branching=2
    )
    with memory_budget(4096):  # two examples' gradients on fc1 per forward pass
        graph = StepwiseSensitivity(forward, layers, neuron_dim=-1).attribute(
            ids, target=1, mask=mask, mode="local", branching=2
        )
    # the budget's measurement on two and three examples, then the first pass checks
    assert pieces[:3] == [2, 3, len(examples)] and max(pieces[3:]) <= 2
    for layer in layers:
        assert torch.equal(graph.neurons(layer), expected.neurons(layer))
        torch.testing.assert_close(graph.relevance(layer), expected.relevance(layer), **TOLERANCE)


def test_neurons_along_the_token_axis_and_bad_masks_are_errors():
    model, examples = masked_transformer(), sequences(count=3)
    ids, mask = padded(examples)
    with (
        pytest.warns(match="neuron_dim=-1"),
        pytest.raises(ValueError, match=r"the pads would be neurons\. Pass neuron_dim=-1"),
    ):
        StepwiseSensitivity(model, layers_of(model)).attribute(ids, target=1, mask=mask)
    ssa = StepwiseSensitivity(model, layers_of(model), neuron_dim=-1)
    with pytest.raises(TypeError, match=r"mask has dtype torch\.float64"):
        ssa.attribute(ids, target=1, mask=mask.double())
    with pytest.raises(ValueError, match="mask has 2 rows but the inputs hold 3"):
        ssa.attribute(ids, target=1, mask=mask[:2])
    with pytest.raises(ValueError, match="mask= is the mask of a single batch"):
        ssa.attribute([(ids, None, mask)], target=1, mask=mask)
