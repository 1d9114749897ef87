"""SSA's class graphs as an input-shaped map, against a per-example loop."""

from __future__ import annotations

import torch
from captum.attr import InputXGradient

from captum_ssa import StepwiseSensitivity
from captum_ssa.evaluation import GraphMaskedAttribution, randomisation_check, ssa_explainer
from tests.models import build


def test_each_example_is_explained_through_its_own_class_graph():
    model, _, shape = build("cnn", 0)
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(30, *shape, generator=generator)
    labels = torch.arange(30) % 3
    layers = [model.conv1, model.conv2, model.fc1, model.fc2]
    graphs = StepwiseSensitivity(model, layers).class_graphs(reference, labels)
    inputs, targets = torch.randn(5, *shape, generator=generator), torch.tensor([2, 0, 1, 2, 0])
    result = GraphMaskedAttribution(model, graphs).attribute(inputs, target=targets)
    for n in range(5):
        label = targets[n].item()
        with graphs[label].mask(model):
            expected = InputXGradient(model).attribute(inputs[n : n + 1], target=label)
        torch.testing.assert_close(result[n : n + 1], expected)
    # the graphs drop neurons, so the map differs from the unmasked network's
    assert not torch.allclose(result, InputXGradient(model).attribute(inputs, target=targets))
    for module in model.modules():
        assert not module._forward_hooks


def test_the_factory_rebuilds_graphs_on_randomised_copies():
    model, _, shape = build("cnn", 0)
    reference = torch.randn(30, *shape, generator=torch.Generator().manual_seed(1))
    explainer = ssa_explainer(["conv1", "conv2", "fc1", "fc2"], reference, torch.arange(30) % 3)
    inputs = reference[:4]
    result = randomisation_check(model, explainer, inputs, torch.tensor([0, 1, 2, 0]), mode="full")
    assert result.correlations.shape == (1, 4)
    assert (abs(result.correlations) <= 1).all()
