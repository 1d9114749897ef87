"""Selectivity (pixel flipping) and DeepDIVE's top-k flip test against plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from captum_ssa.evaluation import selectivity, topk_flip
from tests.models import build


def _data(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model, _, shape = build("cnn", seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(5, *shape, generator=generator)
    attributions = torch.randn(5, *shape, generator=generator)
    targets = torch.tensor([0, 1, 2, 0, 1])
    return model, inputs, attributions, targets


def _reference_curve(model, x, a, target, baseline, per_step, steps, absolute):
    """One example at a time: sort, then remove features step by step."""
    scores = a.flatten().abs() if absolute else a.flatten()
    order = sorted(range(len(scores)), key=lambda j: (-scores[j].item(), j))
    curve = []
    for step in range(steps + 1):
        flat = x.flatten().clone()
        for j in order[: step * per_step]:
            flat[j] = baseline
        with torch.no_grad():
            curve.append(model(flat.reshape(1, *x.shape)).softmax(1)[0, target].item())
    return curve


@pytest.mark.parametrize(("per_step", "steps", "absolute"), [(5, None, False), (7, 9, True)])
def test_selectivity_matches_a_loop(per_step, steps, absolute):
    model, inputs, attributions, targets = _data()
    result = selectivity(
        model,
        inputs,
        attributions,
        targets,
        baseline=0.3,
        features_per_step=per_step,
        steps=steps,
        absolute=absolute,
        rows_per_batch=37,  # several chunks of steps
    )
    total_steps = steps if steps is not None else math.ceil(100 / per_step)
    for n in range(len(inputs)):
        target = targets[n].item()
        curve = _reference_curve(
            model, inputs[n], attributions[n], target, 0.3, per_step, total_steps, absolute
        )
        torch.testing.assert_close(result.curves[n], torch.tensor(curve), atol=1e-5, rtol=1e-4)
        aopc = sum(curve[0] - value for value in curve) / len(curve)
        assert result.aopc[n].item() == pytest.approx(aopc, abs=1e-5)


def test_selectivity_rewards_the_true_evidence():
    # a linear model: removing its largest positive contributions first lowers the
    # class score faster than removing features in a random order
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 2).eval()
    inputs = torch.rand(8, 20)
    target = torch.zeros(8, dtype=torch.long)
    contributions = inputs * (model.weight[0] - model.weight[1]).detach()
    faithful = selectivity(model, inputs, contributions, target).aopc
    shuffled = selectivity(model, inputs, torch.rand(8, 20), target).aopc
    assert (faithful > shuffled).all()


@pytest.mark.parametrize("perturbation", ["baseline", "negate", "shift"])
def test_topk_flip_matches_a_loop(perturbation):
    model, inputs, attributions, _ = _data(1)
    inputs = inputs * 3  # larger moves, so that some predictions flip
    result = topk_flip(
        model, inputs, attributions, k_max=4, perturbation=perturbation, baseline=-1.0, shift=2.0
    )

    def perturbed_class(x, a, features):
        flat = x.flatten().clone()
        for j in features:
            if perturbation == "baseline":
                flat[j] = -1.0
            elif perturbation == "negate":
                flat[j] = -flat[j]
            else:
                flat[j] = flat[j] - 2.0 * torch.sign(a.flatten()[j])
        with torch.no_grad():
            return model(flat.reshape(1, *x.shape)).argmax().item()

    for n in range(len(inputs)):
        x, a = inputs[n], attributions[n]
        magnitude = a.flatten().abs()
        order = sorted(range(len(magnitude)), key=lambda j: (-magnitude[j].item(), j))
        with torch.no_grad():
            predicted = model(x[None]).argmax().item()
        for k in range(1, 5):
            flipped = perturbed_class(x, a, order[:k]) != predicted
            assert result.flipped[n, k - 1].item() == flipped
        assert result.first_flips[n].item() == (perturbed_class(x, a, order[:1]) != predicted)
        assert result.second_flips[n].item() == (perturbed_class(x, a, order[1:2]) != predicted)
    assert result.flip_rate.shape == (4,)


def test_second_implies_first_counts_only_second_flips():
    from captum_ssa.evaluation import TopKFlipResult

    result = TopKFlipResult(
        flipped=torch.zeros(4, 1, dtype=torch.bool),
        first_flips=torch.tensor([True, False, True, True]),
        second_flips=torch.tensor([True, True, False, False]),
    )
    assert result.second_implies_first == pytest.approx(0.5)
    result.second_flips[:] = False
    assert math.isnan(result.second_implies_first)
