"""Continuity against a direct computation; the Captum wrappers against Captum."""

from __future__ import annotations

import pytest
import torch
from captum.attr import InputXGradient, Saliency
from captum.metrics import infidelity, sensitivity_max

from captum_ssa.evaluation import continuity, infidelity_score, max_sensitivity
from captum_ssa.evaluation.robustness import gaussian_perturbation
from tests.models import build


def _setup():
    model, _, shape = build("cnn", 0)
    inputs = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    return model, inputs, torch.tensor([2, 0, 1])


@pytest.mark.parametrize("per_example_target", [True, False])
def test_continuity_is_the_largest_ratio_over_the_same_perturbations(per_example_target):
    model, inputs, targets = _setup()
    target = targets if per_example_target else 1
    explain = InputXGradient(model).attribute
    result = continuity(explain, inputs, target, radius=0.05, n_samples=4, seed=3)
    # the same draws, one example and one perturbation at a time
    generator = torch.Generator().manual_seed(3)
    noise = (torch.rand((4, *inputs.shape), generator=generator) * 2 - 1) * 0.05
    for n in range(len(inputs)):
        t = targets[n].item() if per_example_target else 1
        here = explain(inputs[n : n + 1], target=t)
        ratios = []
        for s in range(4):
            there = explain(inputs[n : n + 1] + noise[s, n], target=t)
            ratios.append(((there - here).norm() / noise[s, n].norm()).item())
        assert result[n].item() == pytest.approx(max(ratios), rel=1e-4)


def test_continuity_of_a_linear_models_gradient_is_zero():
    model = torch.nn.Linear(6, 3)
    inputs = torch.randn(4, 6)
    assert torch.allclose(continuity(Saliency(model).attribute, inputs, 0), torch.zeros(4))


def test_the_captum_wrappers_equal_captums_own_calls():
    model, inputs, targets = _setup()
    explain = Saliency(model).attribute
    torch.manual_seed(7)
    expected = infidelity(
        model,
        gaussian_perturbation(0.2),
        inputs,
        explain(inputs, target=targets),
        target=targets,
        n_perturb_samples=5,
        normalize=True,
    )
    ours = infidelity_score(model, explain, inputs, targets, 0.2, n_perturb_samples=5, seed=7)
    torch.testing.assert_close(ours, expected)
    torch.manual_seed(7)
    expected = sensitivity_max(
        explain, inputs, perturb_radius=0.1, n_perturb_samples=4, target=targets
    )
    ours = max_sensitivity(explain, inputs, targets, radius=0.1, n_perturb_samples=4, seed=7)
    torch.testing.assert_close(ours, expected)
