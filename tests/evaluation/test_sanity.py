"""The randomisation sanity check against a manual loop that re-initialises layers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import Saliency
from scipy.stats import spearmanr

from captum_ssa import InactiveStateSensitivity
from captum_ssa.evaluation import Explainer, randomisable_layers, randomisation_check
from captum_ssa.evaluation.sanity import hash_name, spearman_rows
from tests.models import build


def _setup():
    model, _, shape = build("cnn", 0)
    inputs = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    return model, inputs, torch.tensor([0, 1, 2, 1])


def _reference(model, make_explainer, inputs, target, mode, seed=0):
    """Re-initialise layers of a fresh copy one by one, top down, and correlate."""
    names = [
        n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    top_down = names[::-1]
    trained = make_explainer(model).attribute(inputs, target=target).abs()
    rows = []
    for i, name in enumerate(top_down):
        randomised = copy.deepcopy(model)
        for layer_name in top_down[: i + 1] if mode == "cascading" else [name]:
            torch.manual_seed(seed + hash_name(layer_name))
            dict(randomised.named_modules())[layer_name].reset_parameters()
        after = make_explainer(randomised).attribute(inputs, target=target).abs()
        row = []
        for n in range(len(inputs)):
            rho = spearmanr(trained[n].flatten().detach(), after[n].flatten().detach())[0]
            row.append(rho)
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_saliency_matches_a_manual_loop(mode):
    model, inputs, target = _setup()
    result = randomisation_check(model, Saliency(model), inputs, target, mode=mode)
    expected = _reference(model, Saliency, inputs, target, mode)
    assert result.layers == ["fc2", "fc1", "conv2", "conv1"]
    np.testing.assert_allclose(result.correlations, expected, atol=1e-6)


def test_a_fitted_method_is_rebuilt_and_refitted_on_the_copy():
    model, inputs, target = _setup()
    reference_data = torch.randn(16, *inputs.shape[1:], generator=torch.Generator().manual_seed(2))
    insens = InactiveStateSensitivity(model, model.conv2).fit(reference_data)

    def fresh(m):
        return InactiveStateSensitivity(m, m.conv2).fit(reference_data)

    expected = _reference(model, fresh, inputs, target, "cascading")
    given_object = randomisation_check(model, insens, inputs, target, fit_inputs=reference_data)
    np.testing.assert_allclose(given_object.correlations, expected, atol=1e-6)
    factory = Explainer(
        lambda m: InactiveStateSensitivity(m, m.conv2),
        fit=lambda method, _m: method.fit(reference_data),
    )
    from_factory = randomisation_check(model, factory, inputs, target)
    np.testing.assert_allclose(from_factory.correlations, expected, atol=1e-6)
    with pytest.raises(ValueError, match="fit_inputs"):
        randomisation_check(model, insens, inputs, target)


def test_full_randomisation_is_the_last_cascading_step_and_plain_callables_get_nan():
    model, inputs, target = _setup()
    full = randomisation_check(model, Saliency(model), inputs, target, mode="full")
    cascading = randomisation_check(model, Saliency(model), inputs, target)
    np.testing.assert_allclose(full.correlations[0], cascading.correlations[-1])
    plain = randomisation_check(model, Saliency(model).attribute, inputs, target, mode="full")
    assert np.isnan(plain.correlations).all()


def test_the_users_model_is_left_exactly_as_it_was():
    model, inputs, target = _setup()
    model.train()  # the flag must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    versions = [p._version for p in model.parameters()]
    reference_data = torch.randn(8, *inputs.shape[1:])
    model.eval()
    insens = InactiveStateSensitivity(model, model.conv2).fit(reference_data)
    model.train()
    for mode in ("cascading", "independent"):
        randomisation_check(model, Saliency(model), inputs, target, mode=mode)
    model.eval()
    randomisation_check(model, insens, inputs, target, fit_inputs=reference_data, mode="full")
    model.train()
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert [p._version for p in model.parameters()] == versions
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
    insens.attribute(inputs)  # the user's fit is still current


def test_spearman_rows_handles_ties_like_scipy():
    first = torch.tensor([[0.0, 0.0, 1.0, 2.0, 2.0], [3.0, 1.0, 2.0, 0.0, 0.0]])
    second = torch.tensor([[1.0, 0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0, 5.0]])
    for n in range(2):
        assert spearman_rows(first, second)[n] == pytest.approx(spearmanr(first[n], second[n])[0])


def test_randomisable_layers_are_the_weighted_modules_in_order():
    model, _, _ = build("cnn_bn", 0)
    assert randomisable_layers(model) == ["conv1", "bn1", "conv2", "fc1", "fc2"]


def test_input_x_gradient_fails_the_check_where_saliency_passes():
    # Adebayo et al.'s ordering on a quickly trained digits MLP: multiplying by the input
    # imprints the digit whatever the weights, so InputXGradient stays correlated
    from captum.attr import InputXGradient
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images[:600], dtype=torch.float32) / 16
    y = torch.as_tensor(labels[:600])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:500]), y[:500]).backward()
        optimiser.step()
    model.eval()
    assert (model(x[500:]).argmax(1) == y[500:]).float().mean() > 0.8
    test, target = x[500:540], y[500:540]
    saliency = randomisation_check(model, Saliency(model), test, target, mode="full")
    input_x_gradient = randomisation_check(model, InputXGradient(model), test, target, mode="full")
    saliency_mean = np.nanmean(saliency.correlations)
    assert np.nanmean(input_x_gradient.correlations) > saliency_mean + 0.3
