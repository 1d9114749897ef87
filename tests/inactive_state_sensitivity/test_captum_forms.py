"""InactiveStateSensitivity takes Captum's neuron-method forms (``neuron_selector``,
``device_ids``), has no convergence delta, and says so when its layer is taken
after the activation."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from captum_ssa import CaptumSSAWarning, InactiveStateSensitivity
from tests.inactive_state_sensitivity.test_inactive_state_sensitivity import reference_insens
from tests.models import build, layer_output


@pytest.mark.parametrize("weighting", ["frequency", "uniform"])
def test_selected_neurons_equal_the_plain_reference_and_parts_sum_to_the_layer(weighting):
    model, layers, shape = build("cnn", 0)
    generator = torch.Generator().manual_seed(0)
    x, reference = (
        torch.randn(3, *shape, generator=generator),
        torch.randn(20, *shape, generator=generator),
    )
    layer = layers["conv2"]
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    unit_shape = layer_output(model, layer, x[:1]).shape[1:]  # (channels, h, w)
    channels = unit_shape[0]
    parts = [insens.attribute(x, weighting=weighting, neuron_selector=c) for c in range(channels)]
    torch.testing.assert_close(
        sum(parts), insens.attribute(x, weighting=weighting), rtol=1e-4, atol=1e-5
    )
    selector = (slice(1, 3), slice(None), 2)
    units = torch.zeros(unit_shape, dtype=torch.bool)
    units[selector] = True
    selected = units.flatten().nonzero().flatten().tolist()
    expected = reference_insens(model, layer, x, reference, weighting, units=selected)
    result = insens.attribute(x, weighting=weighting, neuron_selector=selector)
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-5)


def test_a_callable_selector_or_a_list_of_layers_is_a_clear_error():
    model, layers, shape = build("mlp", 0)
    x = torch.randn(2, *shape)
    insens = InactiveStateSensitivity(model, layers["fc1"])
    with pytest.raises(TypeError, match="not a callable"):
        insens.attribute(x, weighting="uniform", neuron_selector=lambda out: out[:, 0])
    both = InactiveStateSensitivity(model, [layers["fc1"], layers["fc2"]])
    with pytest.raises(ValueError, match="single layer"):
        both.attribute(x, weighting="uniform", neuron_selector=0)


def test_no_convergence_delta():
    model, layers, shape = build("mlp", 0)
    insens = InactiveStateSensitivity(model, layers["fc1"])
    x = torch.randn(2, *shape)
    assert not insens.has_convergence_delta()
    with pytest.raises(NotImplementedError, match="no convergence delta"):
        insens.compute_convergence_delta(insens.attribute(x, weighting="uniform"), 0.0, x)


def test_a_layer_after_its_relu_warns_that_insens_needs_pre_activations():
    model, _, shape = build("mlp", 0)  # fc1 -> act1 (ReLU) -> ...
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    after = InactiveStateSensitivity(model, model.act1)
    with pytest.warns(CaptumSSAWarning, match="pre-activations: pass the layer before"):
        result = after.attribute(x, weighting="uniform")
    assert not result.any()  # what the warning explains
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptumSSAWarning)
        after.attribute(x, weighting="uniform")  # once per instance
        InactiveStateSensitivity(model, model.fc1).attribute(x, weighting="uniform")


def test_device_ids_are_stored_and_checked():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    assert InactiveStateSensitivity(model, model[0], device_ids=[1]).device_ids == [1]
    with pytest.raises(TypeError, match="device_ids"):
        InactiveStateSensitivity(model, model[0], device_ids=[True])
