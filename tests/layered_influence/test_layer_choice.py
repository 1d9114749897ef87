"""How LayeredInfluence scores its candidate layers: the linear probe on the neuron
activities, the lowest layer within tolerance, the Gini coefficient."""

from __future__ import annotations

import pytest
import torch

from captum_ssa._core.layered_influence.layer_choice import (
    gini_coefficient,
    linear_probe_accuracy,
    lowest_within_tolerance,
)
from captum_ssa._core.layered_influence.reference import neuron_activities


def test_gini_known_answers():
    assert gini_coefficient(torch.tensor([2.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)
    assert gini_coefficient(torch.full((5,), 3.0)) == pytest.approx(0.0)
    assert gini_coefficient(torch.zeros(4)) == 0.0
    assert gini_coefficient(torch.tensor([1.0, 3.0])) == pytest.approx(0.25)


def test_lowest_within_tolerance():
    assert lowest_within_tolerance([0.75, 0.99, 1.0, 1.0], 0.02) == 1
    assert lowest_within_tolerance([0.75, 0.9, 1.0, 1.0], 0.02) == 2
    assert lowest_within_tolerance([0.75, 0.9, 1.0, 1.0], 0.3) == 0


def test_neuron_activities_are_channel_means():
    output = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    torch.testing.assert_close(neuron_activities(output), output.mean((2, 3)))
    flat = torch.randn(4, 5)
    assert torch.equal(neuron_activities(flat), flat)


def test_linear_probe_needs_two_classes_with_two_points():
    activities = torch.randn(6, 2)
    with pytest.raises(ValueError, match="at least two"):
        linear_probe_accuracy(activities, torch.tensor([0, 0, 0, 0, 0, 1]))


def test_linear_probe_leaves_out_a_single_point_class():
    activities = torch.tensor([[-1.0], [-1.1], [-0.9], [1.0], [1.1], [0.9], [5.0]])
    with pytest.warns(UserWarning, match=r"leaves out classes \[2\]"):
        assert linear_probe_accuracy(activities, torch.tensor([0, 0, 0, 1, 1, 1, 2])) == 1.0


def test_linear_probe_scores_a_separable_and_a_useless_feature():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    separable = (labels.float() * 2 - 1)[:, None] + 0.1 * torch.randn(200, 1, generator=generator)
    noise = torch.randn(200, 1, generator=generator)
    assert linear_probe_accuracy(separable, labels) == 1.0
    assert linear_probe_accuracy(noise, labels) < 0.7
