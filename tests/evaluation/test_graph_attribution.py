"""SSA's class graphs as an input-shaped map, against a per-example loop."""

from __future__ import annotations

import torch
from captum.attr import InputXGradient
from torch import Tensor, nn

from captum_ssa import StepwiseSensitivity
from captum_ssa.evaluation import (
    GraphMaskedAttribution,
    max_sensitivity,
    randomisation_check,
    ssa_explainer,
)
from tests.models import build


class TwoInputs(nn.Module):
    """A model of two inputs around a one-input one: it explains ``image + offset``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: Tensor, offset: Tensor) -> Tensor:
        return self.inner(image + offset)


def _graphs_and_examples(seed: int):
    model, _, shape = build("cnn", 0)
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(30, *shape, generator=generator)
    layers = [model.conv1, model.conv2, model.fc1, model.fc2]
    graphs = StepwiseSensitivity(model, layers).class_graphs(reference, torch.arange(30) % 3)
    inputs = torch.randn(5, *shape, generator=generator)
    return model, graphs, inputs, torch.tensor([2, 0, 1, 2, 0])


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


def test_a_tuple_of_inputs_gives_a_tuple_of_maps_each_through_its_class_graph():
    model, graphs, images, targets = _graphs_and_examples(2)
    offsets = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    two_inputs = TwoInputs(model)
    result = GraphMaskedAttribution(two_inputs, graphs).attribute((images, offsets), targets)
    assert isinstance(result, tuple) and len(result) == 2
    for n in range(5):
        label = targets[n].item()
        with graphs[label].mask(two_inputs):
            expected = InputXGradient(two_inputs).attribute(
                (images[n : n + 1], offsets[n : n + 1]), target=label
            )
        torch.testing.assert_close(result[0][n : n + 1], expected[0])
        torch.testing.assert_close(result[1][n : n + 1], expected[1])


def test_a_one_tensor_tuple_gives_the_tensor_maps_in_a_one_tensor_tuple():
    model, graphs, inputs, targets = _graphs_and_examples(4)
    explainer = GraphMaskedAttribution(model, graphs)
    result = explainer.attribute((inputs,), target=targets)
    assert isinstance(result, tuple) and len(result) == 1
    torch.testing.assert_close(result[0], explainer.attribute(inputs, target=targets))


def test_captums_sensitivity_max_explains_through_the_graphs():
    # sensitivity_max hands the explanation function a tuple of inputs
    model, graphs, inputs, targets = _graphs_and_examples(5)
    explainer = GraphMaskedAttribution(model, graphs)
    scores = max_sensitivity(explainer.attribute, inputs, targets, n_perturb_samples=2)
    assert scores.shape == (5,)
    assert torch.isfinite(scores).all() and (scores >= 0).all()


def test_layer_names_of_a_wrapped_model_are_the_users():
    """SSA names a DataParallel model's layers as the user does (``conv1``, not
    ``module.conv1``): the explainer finds its layers by those names."""
    model, _, shape = build("cnn", 0)
    x = torch.randn(12, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(12) % 3
    explainer = ssa_explainer(["conv1", "conv2", "fc1", "fc2"], x, y)
    plain = explainer.build(model).attribute(x, target=y)
    wrapped = explainer.build(nn.DataParallel(model)).attribute(x, target=y)
    torch.testing.assert_close(wrapped, plain)
