"""SwitchedLinearProjection: exactness, known answers, Captum conventions."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_ssa import SwitchedLinearProjection
from tests.models import PIECEWISE_LINEAR_MODELS, TwoInputs, build, layer_output

SETTINGS = settings(max_examples=12, deadline=None)


def reference_switched_weights(
    model: nn.Module, layer: nn.Module, x: Tensor, index: tuple
) -> Tensor:
    """Slow and plain: one example at a time, the full Jacobian of the layer output."""

    def output_for(example: Tensor) -> Tensor:
        return layer_output(model, layer, example[None])[0]

    rows = []
    for example in x:
        jacobian = torch.autograd.functional.jacobian(output_for, example)
        rows.append(jacobian[index])
    return torch.stack(rows)


def mlp_switched_weights(model: nn.Module, x: Tensor, neuron: int) -> Tensor:
    """Independent closed form for the MLP of tests.models: W3 S2 W2 S1 W1."""
    weights = []
    for example in x:
        h1 = model.fc1(example)
        s1 = torch.diag((h1 > 0).float())
        h2 = model.fc2(torch.relu(h1))
        s2 = torch.diag((h2 > 0).float())
        product = model.fc3.weight @ s2 @ model.fc2.weight @ s1 @ model.fc1.weight
        weights.append(product[neuron])
    return torch.stack(weights)


def neuron_of(layer_shape: torch.Size, seed: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(int(torch.randint(size, (1,), generator=generator)) for size in layer_shape)


@SETTINGS
@given(
    name=st.sampled_from(PIECEWISE_LINEAR_MODELS),
    seed=st.integers(0, 10_000),
    layer_position=st.integers(0, 3),
)
def test_projection_is_exact_on_piecewise_linear_networks(name, seed, layer_position):
    model, layers, shape = build(name, seed)
    layer = list(layers.values())[layer_position % len(layers)]
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected_output = layer_output(model, layer, x)
    index = neuron_of(expected_output.shape[1:], seed)

    slp = SwitchedLinearProjection(model, layer)
    projection = slp.project(x, index)
    dims = tuple(range(1, x.dim()))
    torch.testing.assert_close(
        (projection.weights * x).sum(dims) + projection.bias, projection.activity
    )
    torch.testing.assert_close(projection.activity, expected_output[(slice(None), *index)])
    torch.testing.assert_close(
        projection.weights, reference_switched_weights(model, layer, x, index)
    )
    contributions, delta = slp.decompose(x, index, return_convergence_delta=True)
    has_weights = projection.weights.reshape(4, -1).abs().sum(1) > 0
    torch.testing.assert_close(
        contributions.sum(dims)[has_weights], projection.activity[has_weights]
    )
    torch.testing.assert_close(contributions, (x - projection.centre) * projection.weights)
    assert delta.shape == (4,)


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_weights_match_the_active_subnetwork_product(seed):
    model, layers, _ = build("mlp", seed)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(seed))
    for neuron in range(4):
        weights = SwitchedLinearProjection(model, layers["fc3"]).attribute(x, neuron)
        torch.testing.assert_close(weights, mlp_switched_weights(model, x, neuron).detach())


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_projection_predicts_activity_inside_the_linear_region(seed):
    model, layers, shape = build("cnn", seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *shape, generator=generator)
    step = 1e-3 * torch.randn(x.shape, generator=generator)
    slp = SwitchedLinearProjection(model, layers["fc2"])
    projection = slp.project(x, 1)
    moved = slp.project(x + step, 1)
    same_region = torch.isclose(moved.weights, projection.weights, atol=1e-6).flatten(1).all(1)
    predicted = ((x + step) * projection.weights).sum((1, 2, 3)) + projection.bias
    torch.testing.assert_close(predicted[same_region], moved.activity[same_region])


def hand_network() -> nn.Sequential:
    """x (2) -> Linear -> ReLU -> Linear (1), with weights chosen for hand arithmetic."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -1.0]))
        net[2].weight.copy_(torch.tensor([[3.0, -2.0]]))
        net[2].bias.copy_(torch.tensor([0.5]))
    return net.eval()


def test_known_answer_on_a_hand_computed_network():
    # x = (1, 1): hidden pre-activations (3, -1), so only hidden unit 0 is on:
    # v = 3 * (x1 + 2 x2) + 0.5, w = (3, 6), b = 0.5, v = 9.5.
    net = hand_network()
    x = torch.tensor([[1.0, 1.0]])
    slp = SwitchedLinearProjection(net, net[2])
    projection = slp.project(x, 0)
    torch.testing.assert_close(projection.weights, torch.tensor([[3.0, 6.0]]))
    torch.testing.assert_close(projection.bias, torch.tensor([0.5]))
    torch.testing.assert_close(projection.activity, torch.tensor([9.5]))
    centre = x - (9.5 / 45.0) * torch.tensor([[3.0, 6.0]])
    torch.testing.assert_close(projection.centre, centre)
    contributions = slp.decompose(x, 0)
    torch.testing.assert_close(contributions, (x - centre) * torch.tensor([[3.0, 6.0]]))


def test_delta_is_zero_for_a_first_layer_neuron_and_reports_switching_elsewhere():
    net = hand_network()
    x = torch.tensor([[1.0, 1.0]])
    _, delta = SwitchedLinearProjection(net, net[0]).decompose(x, 0, return_convergence_delta=True)
    torch.testing.assert_close(delta, torch.zeros(1))
    # The output's centre is x - (9.5/45) (3, 6) = (0.367, -0.267), where both
    # hidden units are off (0.367 - 0.533 < 0), so the network's actual activity
    # there is the output bias 0.5 and the delta, -v(c), reports the switch.
    slp = SwitchedLinearProjection(net, net[2])
    _, delta = slp.decompose(x, 0, return_convergence_delta=True)
    centre = slp.project(x, 0).centre
    with torch.no_grad():
        torch.testing.assert_close(delta, -net(centre)[:, 0])
    torch.testing.assert_close(delta, torch.tensor([-0.5]))
    assert slp.has_convergence_delta()


def test_channel_mean_selector_is_the_mean_of_unit_projections():
    model, layers, shape = build("cnn", 3)
    x = torch.randn(2, *shape)
    slp = SwitchedLinearProjection(model, layers["conv2"])
    channel = slp.project(x, lambda out: out[:, 2].mean((1, 2)))
    units = [slp.project(x, (2, h, w)) for h in range(4) for w in range(4)]
    torch.testing.assert_close(channel.weights, torch.stack([u.weights for u in units]).mean(0))
    torch.testing.assert_close(channel.bias, torch.stack([u.bias for u in units]).mean(0))
    dims = (1, 2, 3)
    torch.testing.assert_close((channel.weights * x).sum(dims) + channel.bias, channel.activity)


def test_tuple_inputs_give_tuple_outputs_and_the_projection_spans_both():
    model = TwoInputs().eval()
    image, vector = torch.randn(3, 1, 6, 6), torch.randn(3, 4)
    slp = SwitchedLinearProjection(model, model.out)
    weights = slp.attribute((image, vector), 1)
    assert isinstance(weights, tuple) and len(weights) == 2
    assert weights[0].shape == image.shape and weights[1].shape == vector.shape
    projection = slp.project((image, vector), 1)
    linear = (projection.weights[0] * image).sum((1, 2, 3)) + (projection.weights[1] * vector).sum(
        1
    )
    torch.testing.assert_close(linear + projection.bias, projection.activity)
    contributions = slp.decompose((image, vector), 1)
    total = contributions[0].sum((1, 2, 3)) + contributions[1].sum(1)
    torch.testing.assert_close(total, projection.activity)


def test_additional_forward_args_are_passed_after_the_inputs():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: Tensor, scale: float) -> Tensor:
            return self.fc(x * scale)

    model = Scaled().eval()
    x = torch.randn(4, 3)
    weights = SwitchedLinearProjection(model, model.fc).attribute(x, 0, additional_forward_args=2.0)
    torch.testing.assert_close(weights, 2.0 * model.fc.weight[0].expand(4, 3).detach())


def test_nonlinear_network_warns_once_and_reports_a_real_delta():
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).eval()
    x = torch.randn(4, 3)
    slp = SwitchedLinearProjection(net, net[2])
    with pytest.warns(UserWarning, match="not piecewise linear.*Tanh"):
        _, delta = slp.decompose(x, 0, return_convergence_delta=True)
    assert delta.abs().max() > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slp.attribute(x, 0)  # once per instance: no second warning


def test_piecewise_linear_network_does_not_warn():
    model, layers, shape = build("cnn_bn", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SwitchedLinearProjection(model, layers["fc2"]).decompose(
            torch.randn(2, *shape), 0, return_convergence_delta=True
        )


def test_batch_results_equal_per_example_results():
    model, layers, shape = build("cnn_bn", 1)
    x = torch.randn(5, *shape)
    slp = SwitchedLinearProjection(model, layers["fc1"])
    batch = slp.project(x, 3)
    for i in range(5):
        alone = slp.project(x[i : i + 1], 3)
        torch.testing.assert_close(alone.weights, batch.weights[i : i + 1])
        torch.testing.assert_close(alone.bias, batch.bias[i : i + 1])
        torch.testing.assert_close(alone.centre, batch.centre[i : i + 1])


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (7, "out of range"),
        ((0, 0, 0, 0), "indices"),
        ("a", "neuron_selector"),
        (lambda o: o, "one value per example"),
    ],
)
def test_bad_selectors_get_clear_errors(selector, message):
    model, layers, shape = build("mlp", 0)
    with pytest.raises((ValueError, TypeError), match=message):
        SwitchedLinearProjection(model, layers["fc3"]).attribute(torch.randn(2, *shape), selector)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_model_device():
    model, layers, shape = build("cnn", 0)
    model = model.cuda()
    x = torch.randn(3, *shape, device="cuda")
    projection = SwitchedLinearProjection(model, layers["fc2"]).project(x, 0)
    assert projection.weights.device.type == "cuda"
    torch.testing.assert_close(
        (projection.weights * x).sum((1, 2, 3)) + projection.bias, projection.activity
    )
