"""LayeredInfluence takes Captum's neuron-method forms (``neuron_selector``,
``device_ids``) and has no convergence delta."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NeuronDeconvolution

from captum_ssa._core.layered_influence import LayeredInfluence
from tests.layered_influence.test_explainer import fitted_cnn
from tests.models import layer_output


@pytest.mark.parametrize("selector", [2, (slice(0, 3), 1, slice(None))], ids=["channel", "slices"])
def test_selected_units_keep_their_activation_and_equal_neuron_deconvolution(selector):
    model, explainer, reference = fitted_cnn("conv2")
    inputs = torch.randn(3, *reference.shape[1:], generator=torch.Generator().manual_seed(5))
    reconstruction = explainer.attribute(inputs, neuron_selector=selector)
    activation = layer_output(model, model.conv2, inputs).detach()
    units = torch.zeros_like(activation[0], dtype=torch.bool)
    units[selector] = True
    seed = activation * units
    expected = NeuronDeconvolution(model, model.conv2).attribute(
        inputs.clone().requires_grad_(), lambda output: (output * seed).flatten(1).sum(1)
    )
    torch.testing.assert_close(reconstruction, expected, rtol=1e-6, atol=1e-7)
    assert reconstruction.abs().sum() > 0


def test_selector_errors():
    _, explainer, reference = fitted_cnn("conv2")
    inputs = reference[:2]
    with pytest.raises(ValueError, match="top_k or neuron_selector"):
        explainer.attribute(inputs, top_k=2, neuron_selector=0)
    with pytest.raises(TypeError, match="not a callable"):
        explainer.attribute(inputs, neuron_selector=lambda out: out[:, 0].sum((1, 2)))
    with pytest.raises(ValueError, match="out of range"):
        explainer.attribute(inputs, neuron_selector=(99,))


def test_no_convergence_delta():
    _, explainer, reference = fitted_cnn("conv2")
    inputs = reference[:2]
    assert not explainer.has_convergence_delta()
    with pytest.raises(NotImplementedError, match="no convergence delta"):
        explainer.compute_convergence_delta(explainer.attribute(inputs), 0.0, inputs)


def test_device_ids_are_stored_and_checked():
    model, explainer, _ = fitted_cnn("conv2")
    assert explainer.device_ids is None
    assert LayeredInfluence(model, [model.conv1], device_ids=[0]).device_ids == [0]
    with pytest.raises(TypeError, match="device_ids"):
        LayeredInfluence(model, [model.conv1], device_ids=0)
