"""A pair's gradient factorised through a non-overlapping pool equals per-neuron backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from captum_ssa._core.stepwise_sensitivity import StepwiseSensitivity, segment
from captum_ssa._core.stepwise_sensitivity.segment import (
    mean_gradient_magnitudes,
    pooled_derivative,
)
from captum_ssa._utils.hooks import observe_layer_calls, run_and_capture


class Between(nn.Module):
    """lower -> ``middle`` (element-wise ops and a pool) -> upper."""

    def __init__(self, lower: nn.Module, middle: Callable[[Tensor], Tensor], upper: nn.Module):
        super().__init__()
        self.lower, self.upper = lower, upper
        self.middle = middle

    def forward(self, x: Tensor) -> Tensor:
        return self.upper(self.middle(self.lower(x)))


F = nn.functional
bn = nn.BatchNorm2d(4).eval()
with torch.no_grad():
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-2, 2)

# name: (lower, middle, upper, input shape after the batch, factorised)
CASES: dict[str, tuple[Any, Any, Any, tuple[int, ...], bool]] = {
    "max_relu_before": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.max_pool2d(torch.relu(t), 2),
        lambda: nn.Conv2d(4, 5, 3, padding=1),
        (2, 12, 12),
        True,
    ),
    "max_odd_padding_ceil_relu_after": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: torch.relu(F.max_pool2d(t, 2, padding=1, ceil_mode=True)),
        lambda: nn.Conv2d(4, 5, 2, stride=2),
        (2, 11, 10),
        True,
    ),
    "max_3x2_floor_odd": (
        lambda: nn.Conv2d(2, 4, 2),
        lambda t: F.max_pool2d(F.leaky_relu(t, 0.1), (3, 2)),
        lambda: nn.Conv2d(4, 3, 1),
        (2, 12, 10),
        True,
    ),
    "avg_ceil_padding_no_pad_count": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: torch.tanh(
            F.avg_pool2d(t, 3, padding=1, ceil_mode=True, count_include_pad=False)
        ),
        lambda: nn.Conv2d(4, 5, 3),
        (2, 13, 12),
        True,
    ),
    "batch_norm_max_flatten_linear": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.max_pool2d(torch.relu(bn(t)), 2, ceil_mode=True).flatten(1),
        lambda: nn.Linear(4 * 4 * 4, 6),
        (2, 9, 9),
        True,
    ),
    "global_mean_linear": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.adaptive_avg_pool2d(torch.relu(t), 1).flatten(1),
        lambda: nn.Linear(4, 3),
        (2, 7, 8),
        True,
    ),
    "max1d": (
        lambda: nn.Conv1d(2, 4, 3),
        lambda t: F.max_pool1d(torch.relu(t), 3, ceil_mode=True),
        lambda: nn.Conv1d(4, 3, 2),
        (2, 17),
        True,
    ),
    "avg3d": (
        lambda: nn.Conv3d(2, 4, 2),
        lambda t: F.avg_pool3d(torch.relu(t), 2, padding=1),
        lambda: nn.Conv3d(4, 3, 2),
        (2, 6, 5, 7),
        True,
    ),
    "max3d_ceil": (
        lambda: nn.Conv3d(2, 4, 2),
        lambda t: F.max_pool3d(F.elu(t), (2, 3, 2), ceil_mode=True),
        lambda: nn.Conv3d(4, 3, 1),
        (2, 6, 7, 5),
        True,
    ),
    "overlapping_falls_back": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.max_pool2d(torch.relu(t), 3, stride=2),
        lambda: nn.Conv2d(4, 5, 2),
        (2, 11, 11),
        False,
    ),
    "dilated_falls_back": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.max_pool2d(t, 2, dilation=2),
        lambda: nn.Conv2d(4, 5, 2),
        (2, 11, 11),
        False,
    ),
    "two_pools_fall_back": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.avg_pool2d(F.max_pool2d(t, 2), 2),
        lambda: nn.Conv2d(4, 5, 1),
        (2, 12, 12),
        False,
    ),
    "channel_mixing_falls_back": (
        lambda: nn.Conv2d(2, 4, 3),
        lambda t: F.max_pool2d(t.flip(1), 2),
        lambda: nn.Conv2d(4, 5, 1),
        (2, 10, 10),
        False,
    ),
}


def pair(name: str, dtype: torch.dtype, batch: int = 3) -> tuple[Tensor, ...]:
    lower, middle, upper, shape, _ = CASES[name]
    torch.manual_seed(0)
    model = Between(lower(), middle, upper()).eval().to(dtype)
    bn.to(dtype)
    inputs = (torch.randn(batch, *shape, dtype=dtype).requires_grad_(),)
    with observe_layer_calls([model.lower, model.upper], [False, True]) as calls:
        _, (lower_output, upper_output) = run_and_capture(model, inputs, [model.lower, model.upper])
    return model, lower_output, upper_output, calls.inputs[1]


def per_neuron(
    lower_output: Tensor,
    upper_output: Tensor,
    neurons: Tensor,
    absolute: bool,
    factor: Any,
    weights: Any = None,
) -> Tensor:
    """The plain reference: one backward pass of each upper neuron's activity."""
    rows = []
    for neuron in neurons.tolist():
        activity = upper_output[:, neuron].reshape(len(upper_output), -1).mean(1).sum()
        (gradient,) = torch.autograd.grad(activity, lower_output, retain_graph=True)
        product = gradient if factor is None else gradient * factor
        product = (product.abs() if absolute else product).double()
        flat = product.reshape(*product.shape[:2], -1)
        if weights is None:
            rows.append(flat.mean(2))
        else:
            rows.append((flat * weights.double()[:, None]).sum(2))
    return torch.stack(rows)


TOLERANCES = {torch.float64: {}, torch.float32: {}, torch.float16: {"rtol": 2e-2, "atol": 2e-3}}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("name", CASES)
def test_pooled_factorisation_equals_per_neuron_backward(name, absolute, dtype):
    if name == "avg3d" and dtype == torch.float16:
        pytest.skip("torch has no float16 avg_pool3d on CPU")
    model, lower_output, upper_output, upper_input = pair(name, dtype)
    assert (pooled_derivative(upper_input, lower_output) is not None) is CASES[name][4]
    neurons = torch.tensor([2, 0, 1])
    for factor in (None, lower_output.detach()):
        fast = mean_gradient_magnitudes(
            lower_output, model.upper, upper_output, upper_input, neurons, absolute, factor
        )
        expected = per_neuron(lower_output, upper_output, neurons, absolute, factor)
        assert fast.dtype == dtype and fast.shape == expected.shape
        torch.testing.assert_close(fast.double(), expected, **TOLERANCES[dtype])


def test_pooled_factorisation_with_position_weights():
    model, lower_output, upper_output, upper_input = pair("global_mean_linear", torch.float64)
    weights = torch.rand(lower_output.shape[0], lower_output[0, 0].numel(), dtype=torch.float64)
    neurons = torch.tensor([1, 2])
    for absolute in (True, False):
        fast = mean_gradient_magnitudes(
            lower_output,
            model.upper,
            upper_output,
            upper_input,
            neurons,
            absolute,
            lower_output.detach(),
            lower_weights=weights,
        )
        expected = per_neuron(
            lower_output, upper_output, neurons, absolute, lower_output.detach(), weights
        )
        torch.testing.assert_close(fast, expected)


def test_ties_in_max_pool_follow_torchs_routing():
    """Equal values in a window (ReLU's zeros): the gradient goes where torch routes it."""
    model, lower_output, upper_output, upper_input = pair("max_relu_before", torch.float64)
    assert (torch.relu(lower_output) == 0).any()
    neurons = torch.arange(5)
    fast = mean_gradient_magnitudes(
        lower_output, model.upper, upper_output, upper_input, neurons, True
    )
    torch.testing.assert_close(fast, per_neuron(lower_output, upper_output, neurons, True, None))


def test_batch_norm_in_training_mode_falls_back():
    _, lower_output, _, _ = pair("max_relu_before", torch.float32)
    training = nn.BatchNorm2d(4).train()
    middle = training(lower_output)
    pooled = F.max_pool2d(middle, 2)
    assert pooled_derivative(pooled, lower_output) is None  # the examples mix


class CifarLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc1 = nn.Linear(5 * 3 * 3, 7)
        self.fc2 = nn.Linear(7, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2, ceil_mode=True)
        x = F.avg_pool2d(torch.relu(self.conv2(x)), 2, padding=1).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))

    def layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.fc1, self.fc2]


@pytest.mark.parametrize("relevance", ["gradient", "gradient_x_activation", "gradients"])
@pytest.mark.parametrize("mode", ["global", "local"])
def test_graphs_equal_with_and_without_the_pooled_factorisation(relevance, mode, monkeypatch):
    torch.manual_seed(1)
    model = CifarLike().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(6, 3, 11, 11)
    ssa = StepwiseSensitivity(model, model.layers())
    options: dict[str, Any] = {"target": 1, "relevance": relevance, "mode": mode}
    options.update({"percentile": 40} if mode == "global" else {"branching": 2})
    calls = []

    def counted(*args: Any) -> Any:
        calls.append(original(*args))
        return calls[-1]

    original = segment.pooled_derivative
    monkeypatch.setattr(segment, "pooled_derivative", counted)
    fast = ssa.attribute(x, **options)
    assert any(call is not None for call in calls)  # both pools were factorised
    monkeypatch.setattr(segment, "pooled_derivative", lambda *args: None)
    slow = ssa.attribute(x, **options)
    assert fast.layer_names == slow.layer_names
    for name in fast.layer_names:
        assert torch.equal(fast.neurons(name), slow.neurons(name))
    for upper, lower in zip(fast.layer_names[1:], fast.layer_names[:-1]):
        torch.testing.assert_close(
            fast.relevance_matrix(upper, lower), slow.relevance_matrix(upper, lower)
        )
