"""Behaviour every method keeps: Captum interop, no trace, clear errors.

Shown here for SwitchedLinearProjection and InactiveStateSensitivity; the
methods' own test files show the same for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import visualization
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor, nn

from captum_ssa import InactiveStateSensitivity, ReusedLayerError, SwitchedLinearProjection
from tests.behaviour import assert_same_snapshot, snapshot
from tests.models import build

matplotlib.use("Agg")

Explain = Callable[[nn.Module, nn.Module, Tensor], Any]


def explain_with_slp(model: nn.Module, layer: nn.Module, x: Tensor) -> Any:
    first_unit = lambda output: output.flatten(1)[:, 0]  # noqa: E731
    return SwitchedLinearProjection(model, layer).attribute(x, first_unit)


def explain_with_insens(model: nn.Module, layer: nn.Module, x: Tensor) -> Any:
    reference = torch.randn(8, *x.shape[1:])
    return InactiveStateSensitivity(model, layer).fit(reference).attribute(x)


METHODS = {"slp": explain_with_slp, "insens": explain_with_insens}


def test_switched_weights_have_near_zero_infidelity_for_the_neuron():
    model, layers, shape = build("cnn", 0)
    x = torch.randn(4, *shape)
    slp = SwitchedLinearProjection(model, layers["fc2"])
    weights = slp.attribute(x, 1)

    def neuron(inputs: Tensor) -> Tensor:
        return model(inputs)[:, 1]

    def tiny_perturbation(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = 1e-4 * torch.randn_like(inputs)
        return noise, inputs - noise

    exact = infidelity(neuron, tiny_perturbation, x, weights)
    shuffled = infidelity(neuron, tiny_perturbation, x, weights.flip(0))
    assert exact.shape == (4,)
    assert exact.max() < 1e-10
    assert shuffled.mean() > 100 * exact.mean() + 1e-12


@pytest.mark.parametrize("method", ["slp", "insens"])
def test_sensitivity_max_calls_the_method_under_no_grad_with_tuples(method):
    model, layers, shape = build("cnn", 1)
    x = torch.randn(3, *shape)
    if method == "slp":
        explainer: Any = SwitchedLinearProjection(model, layers["fc2"])
        kwargs: dict[str, Any] = {"neuron_selector": 0}
    else:
        explainer = InactiveStateSensitivity(model, layers["conv2"]).fit(torch.randn(10, *shape))
        kwargs = {}
    sensitivity = sensitivity_max(explainer.attribute, x, n_perturb_samples=3, **kwargs)
    assert sensitivity.shape == (3,)
    assert torch.isfinite(sensitivity).all() and (sensitivity >= 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_visualize_image_attr_draws_the_attribution(method):
    model, layers, shape = build("cnn", 2)
    x = torch.randn(2, *shape)
    attribution = METHODS[method](model, layers["conv2"], x)
    figure, axis = visualization.visualize_image_attr(
        attribution[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="all",
        use_pyplot=False,
    )
    image = axis.get_images()[-1].get_array()
    assert np.asarray(image).shape[:2] == shape[1:]
    matplotlib.pyplot.close(figure)


class InPlaceNet(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


@pytest.mark.parametrize("method", METHODS)
def test_inplace_relu_after_the_layer_gives_the_same_result(method):
    torch.manual_seed(0)
    plain = InPlaceNet(inplace=False).eval()
    inplace = InPlaceNet(inplace=True).eval()
    inplace.load_state_dict(plain.state_dict())
    x = torch.randn(5, 4)
    torch.manual_seed(1)
    expected = METHODS[method](plain, plain.fc1, x)
    torch.manual_seed(1)
    torch.testing.assert_close(METHODS[method](inplace, inplace.fc1, x), expected)
    assert (expected != 0).any()


class ReusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.fc(x)))


@pytest.mark.parametrize("method", METHODS)
def test_reused_module_is_a_clear_error(method):
    model = ReusedNet().eval()
    with pytest.raises(ReusedLayerError, match="more than once"):
        METHODS[method](model, model.fc, torch.randn(2, 4))
    assert not model.fc._forward_hooks


@pytest.mark.parametrize("cls", [SwitchedLinearProjection, InactiveStateSensitivity])
def test_layer_not_in_the_model_is_a_clear_error(cls):
    model, _, _ = build("mlp", 0)
    with pytest.raises(ValueError, match="not part of the model"):
        cls(model, nn.Linear(6, 8))


@pytest.mark.parametrize("method", METHODS)
def test_layer_that_never_runs_is_a_clear_error(method):
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)

    model = Skips().eval()
    with pytest.raises(ValueError, match="did not run"):
        METHODS[method](model, model.unused, torch.randn(2, 4))


@pytest.mark.parametrize("method", METHODS)
def test_leaves_no_trace_on_success(method):
    model, layers, shape = build("cnn", 3)
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)  # a user's own gradient
    x = torch.randn(3, *shape)
    before = snapshot(model)
    METHODS[method](model, layers["conv2"], x)
    assert_same_snapshot(before, snapshot(model))
    assert not x.requires_grad and x.grad is None
    y = torch.randn(3, *shape, requires_grad=True)
    METHODS[method](model, layers["conv2"], y)
    assert y.requires_grad and y.grad is None


@pytest.mark.parametrize("method", METHODS)
def test_leaves_no_trace_on_exception(method):
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 3)
            self.fc2 = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            hidden = self.fc1(x)
            if not torch.is_grad_enabled() or hidden.requires_grad:
                raise RuntimeError("boom")
            return self.fc2(hidden)

    model = Fails().eval()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        METHODS[method](model, model.fc2, torch.randn(2, 4))
    assert_same_snapshot(before, snapshot(model))


@pytest.mark.parametrize("method", METHODS)
def test_training_mode_with_dropout_or_batch_norm_warns_and_stays_in_training(method):
    model, layers, shape = build("cnn_bn", 0)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        METHODS[method](model, layers["fc1"], torch.randn(4, *shape))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("make_input", "error", "message"),
    [
        (lambda shape: torch.full((2, *shape), float("nan")), ValueError, "NaN"),
        (lambda shape: torch.empty(0, *shape), ValueError, "no examples"),
        (lambda shape: torch.ones(2, *shape, dtype=torch.long), TypeError, "floating-point"),
        (lambda shape: [torch.ones(2, *shape)], TypeError, "tensor or a tuple"),
    ],
)
def test_bad_inputs_get_clear_errors(method, make_input, error, message):
    model, layers, shape = build("mlp", 0)
    if method == "slp":
        explain = SwitchedLinearProjection(model, layers["fc2"]).attribute
        kwargs: dict[str, Any] = {"neuron_selector": 0}
    else:
        explain = (
            InactiveStateSensitivity(model, layers["fc2"]).fit(torch.randn(8, *shape)).attribute
        )
        kwargs = {}
    with pytest.raises(error, match=message):
        explain(make_input(shape), **kwargs)


def test_inputs_with_different_batch_sizes_are_a_clear_error():
    from tests.models import TwoInputs

    model = TwoInputs().eval()
    with pytest.raises(ValueError, match="same batch size"):
        SwitchedLinearProjection(model, model.out).attribute(
            (torch.randn(2, 1, 6, 6), torch.randn(3, 4)), 0
        )


def test_wrong_input_shape_surfaces_the_model_error_and_leaves_no_hooks():
    model, layers, _ = build("mlp", 0)
    with pytest.raises(RuntimeError, match="shape"):
        SwitchedLinearProjection(model, layers["fc2"]).attribute(torch.randn(2, 5), 0)
    assert all(not m._forward_hooks for m in model.modules())
