"""SwitchedLinearProjection: exactness, known answers, Captum conventions."""

from __future__ import annotations

import warnings
from typing import Union

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import sensitivity_max
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_ssa import SwitchedLinearProjection
from tests.models import PIECEWISE_LINEAR_MODELS, TwoInputs, build, layer_output

SETTINGS = settings(max_examples=12, deadline=None)


def reference_switched_weights(
    model: nn.Module, layer: nn.Module, x: Tensor, index: Union[tuple, list[tuple]]
) -> Tensor:
    """Slow and plain: one example at a time, the full Jacobian of the layer output.

    ``index`` is one neuron for every example, or a list with one per example.
    """

    def output_for(example: Tensor) -> Tensor:
        return layer_output(model, layer, example[None])[0]

    rows = []
    for position, example in enumerate(x):
        jacobian = torch.autograd.functional.jacobian(output_for, example)
        rows.append(jacobian[index[position] if isinstance(index, list) else index])
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
    channel = slp.project(x, neuron_selector=lambda out: out[:, 2].mean((1, 2)))
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
    slp = SwitchedLinearProjection(model, layers["fc3"])
    with pytest.raises((ValueError, TypeError), match=message):
        slp.attribute(torch.randn(2, *shape), neuron_selector=selector)


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


# --- Captum's target on the layer output ---------------------------------------------


def per_example_reference(model: nn.Module, layer: nn.Module, x: Tensor, neurons: list) -> Tensor:
    return reference_switched_weights(model, layer, x, [tuple(n) for n in neurons])


def test_targets_on_a_linear_output_match_selectors_and_the_jacobian():
    model, layers, shape = build("cnn", 4)
    x = torch.randn(4, *shape)
    slp = SwitchedLinearProjection(model, layers["fc1"])
    classes = [3, 0, 5, 3]
    expected = per_example_reference(model, layers["fc1"], x, [(c,) for c in classes])
    torch.testing.assert_close(slp.attribute(x, torch.tensor(classes)), expected)
    torch.testing.assert_close(slp.attribute(x, classes), expected)
    torch.testing.assert_close(slp.attribute(x, [(c,) for c in classes]), expected)
    by_selector = slp.attribute(x, neuron_selector=lambda out: out[torch.arange(4), classes])
    torch.testing.assert_close(by_selector, expected)
    # The same int for every example, as an int, a NumPy integer or a 0-dim tensor.
    for target in (2, np.int64(2), torch.tensor(2), (2,)):
        torch.testing.assert_close(slp.attribute(x, target), slp.attribute(x, neuron_selector=2))
    torch.testing.assert_close(
        slp.attribute(x, 2), reference_switched_weights(model, layers["fc1"], x, (2,))
    )


def test_targets_on_a_conv_output_match_selectors_and_the_jacobian():
    model, layers, shape = build("cnn", 5)
    x = torch.randn(3, *shape)
    slp = SwitchedLinearProjection(model, layers["conv2"])
    units = [(4, 0, 3), (1, 2, 2), (0, 3, 1)]
    expected = per_example_reference(model, layers["conv2"], x, units)
    torch.testing.assert_close(slp.attribute(x, units), expected)
    by_selector = torch.cat(
        [slp.attribute(x[i : i + 1], neuron_selector=unit) for i, unit in enumerate(units)]
    )
    torch.testing.assert_close(by_selector, expected)
    torch.testing.assert_close(
        slp.attribute(x, (1, 2, 2)), slp.attribute(x, neuron_selector=(1, 2, 2))
    )
    torch.testing.assert_close(
        slp.attribute(x, (1, 2, 2)),
        reference_switched_weights(model, layers["conv2"], x, (1, 2, 2)),
    )
    projection = slp.project(x, units)
    with torch.no_grad():
        output = layer_output(model, layers["conv2"], x)
    torch.testing.assert_close(
        projection.activity, torch.stack([output[(i, *u)] for i, u in enumerate(units)])
    )


def test_the_class_logit_projection_is_the_signed_gradient_of_the_logit():
    model, layers, shape = build("residual", 6)
    x = torch.randn(5, *shape)
    y = torch.tensor([0, 2, 1, 1, 0])
    weights = SwitchedLinearProjection(model, layers["fc_out"]).attribute(x, target=y)
    leaf = x.clone().requires_grad_()
    logits = model(leaf)
    (gradient,) = torch.autograd.grad(logits[torch.arange(5), y].sum(), leaf)
    torch.testing.assert_close(weights, gradient)


def test_a_layer_with_one_value_per_example_needs_no_target():
    net = hand_network()
    x = torch.randn(4, 2)
    slp = SwitchedLinearProjection(net, net[2])
    torch.testing.assert_close(slp.attribute(x), slp.attribute(x, 0))


@pytest.mark.parametrize(
    ("layer", "target", "message"),
    [
        ("conv2", 1, r"selects \(4, 4\) values per example.*tuple of 3 indices \(c, h, w\)"),
        ("conv2", torch.tensor([0, 1]), r"target.*\(2, 5, 4, 4\).*list of such tuples"),
        ("conv2", torch.tensor([0, 1]), r"out\[:, c\]\.mean\(\(1, 2\)\)"),
        ("conv2", (1, 0, 0, 0), "target.*does not select"),
        ("conv2", [(1, 0, 9), (0, 0, 0)], "target.*does not select"),
        ("fc1", 6, r"target 6 does not select.*\(2, 6\).*int in \[0, 6\)"),
        ("fc1", [0, 1, 2], "target.*does not select"),
        ("fc1", torch.tensor([0.0, 1.0]), "target.*does not select"),
        ("fc1", "a", "target.*does not select"),
        ("fc1", True, "not a bool"),
    ],
)
def test_bad_targets_get_clear_errors(layer, target, message):
    model, layers, shape = build("cnn", 0)
    slp = SwitchedLinearProjection(model, layers[layer])
    with pytest.raises(ValueError, match=message):
        slp.attribute(torch.randn(2, *shape), target)


def test_target_and_neuron_selector_are_exclusive_and_one_is_needed():
    model, layers, shape = build("cnn", 0)
    slp = SwitchedLinearProjection(model, layers["fc1"])
    x = torch.randn(2, *shape)
    with pytest.raises(ValueError, match="either target or neuron_selector, not both"):
        slp.attribute(x, 1, neuron_selector=1)
    with pytest.raises(ValueError, match=r"give target or neuron_selector.*\(2, 6\)"):
        slp.attribute(x)
    with pytest.raises(ValueError, match="one value per example"):
        slp.project(x, neuron_selector=lambda out: out[:, :2])
    # issue 17: Captum's neuron methods take the selector second, so a callable there
    # is read as neuron_selector (it used to be a TypeError), and with one given too
    # it is the same error as any target with a selector
    first_unit = lambda out: out[:, 0]  # noqa: E731
    torch.testing.assert_close(
        slp.attribute(x, first_unit), slp.attribute(x, neuron_selector=first_unit)
    )
    with pytest.raises(ValueError, match="either target or neuron_selector, not both"):
        slp.attribute(x, first_unit, neuron_selector=1)


# --- convergence delta and baselines ---------------------------------------------


def activity_of(model: nn.Module, layer: nn.Module, x: Tensor, units: list) -> Tensor:
    """The network's actual activity of one layer unit per example, by plain indexing."""
    with torch.no_grad():
        output = layer_output(model, layer, x)
    return torch.stack([output[(i, *unit)] for i, unit in enumerate(units)])


@pytest.mark.parametrize("multiply", [False, True])
def test_attribute_delta_equals_decompose_delta_and_compute_convergence_delta(multiply):
    model, layers, shape = build("cnn", 7)
    x = torch.randn(4, *shape)
    y = torch.tensor([0, 2, 1, 2])
    slp = SwitchedLinearProjection(model, layers["fc2"], multiply_by_inputs=multiply)
    assert slp.multiplies_by_inputs is multiply
    attributions, delta = slp.attribute(x, y, return_convergence_delta=True)
    contributions, decompose_delta = slp.decompose(x, y, return_convergence_delta=True)
    torch.testing.assert_close(delta, decompose_delta)
    centre = slp.project(x, y).centre
    by_hand = -activity_of(model, layers["fc2"], centre, [(int(c),) for c in y])
    torch.testing.assert_close(delta, by_hand)
    recomputed = slp.compute_convergence_delta(attributions, centre, x, target=y)
    torch.testing.assert_close(recomputed, delta, atol=1e-5, rtol=1e-4)
    expected_attributions = contributions if multiply else slp.attribute(x, y)
    torch.testing.assert_close(attributions, expected_attributions)
    assert delta.shape == (4,)


@pytest.mark.parametrize("multiply", [False, True])
@pytest.mark.parametrize("baseline_kind", ["scalar", "batch_of_one", "per_example", "0-dim"])
def test_baselines_give_contributions_from_the_baseline_and_an_honest_delta(
    multiply, baseline_kind
):
    model, layers, shape = build("cnn", 8)
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(3, *shape, generator=generator)
    start = {
        "scalar": 0.25,
        "batch_of_one": torch.randn(1, *shape, generator=generator),
        "per_example": torch.randn(3, *shape, generator=generator),
        "0-dim": torch.tensor(-0.5),
    }[baseline_kind]
    start_points = torch.as_tensor(start).expand_as(x)
    units = [(1, 0, 2), (3, 1, 1), (0, 2, 3)]
    slp = SwitchedLinearProjection(model, layers["conv2"], multiply_by_inputs=multiply)
    weights = slp.attribute(x, units) if multiply else None
    attributions, delta = slp.attribute(x, units, baselines=start, return_convergence_delta=True)
    contributions, decompose_delta = slp.decompose(
        x, units, baselines=start, return_convergence_delta=True
    )
    switched = reference_switched_weights(model, layers["conv2"], x, units)
    torch.testing.assert_close(contributions, (x - start_points) * switched)
    torch.testing.assert_close(attributions, contributions if multiply else switched)
    by_hand = (
        activity_of(model, layers["conv2"], x, units)
        - activity_of(model, layers["conv2"], start_points, units)
        - ((x - start_points) * switched).sum((1, 2, 3))
    )
    torch.testing.assert_close(delta, by_hand, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(decompose_delta, delta)
    recomputed = slp.compute_convergence_delta(attributions, start, x, target=units)
    torch.testing.assert_close(recomputed, delta, atol=1e-5, rtol=1e-4)
    assert weights is None or weights.shape == x.shape


@SETTINGS
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_delta_is_zero_for_a_first_layer_neuron_with_any_baseline(seed, scale):
    model, layers, shape = build("cnn", seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *shape, generator=generator)
    start = scale * torch.randn(3, *shape, generator=generator)
    slp = SwitchedLinearProjection(model, layers["conv1"])
    neuron = neuron_of(torch.Size((4, 8, 8)), seed)
    _, delta = slp.attribute(x, neuron, baselines=start, return_convergence_delta=True)
    torch.testing.assert_close(delta, torch.zeros(3), atol=1e-5 * scale, rtol=0)
    _, delta = slp.attribute(x, neuron, return_convergence_delta=True)
    torch.testing.assert_close(delta, torch.zeros(3), atol=1e-5, rtol=0)


def test_delta_of_a_hidden_neuron_reports_the_switch_towards_a_baseline():
    # The hand network at x = (1, 1) with baseline 0: hidden pre-activations
    # (0, -1), both off, so v(0) = 0.5; w = (3, 6), predicted change 9, v(x) = 9.5:
    # delta = 9.5 - 0.5 - 9 = 0. At baseline (0, 2) hidden unit 0 is on
    # (pre-activation 4), unit 1 too (1): v = 3*4 - 2*1 + 0.5 = 10.5; the linear
    # model predicts a change of (1, -1)·(3, 6) = -3: delta = 9.5 - 10.5 + 3 = 2.
    net = hand_network()
    slp = SwitchedLinearProjection(net, net[2], multiply_by_inputs=True)
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    start = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    contributions, delta = slp.attribute(x, 0, baselines=start, return_convergence_delta=True)
    torch.testing.assert_close(contributions, torch.tensor([[3.0, 6.0], [3.0, -6.0]]))
    torch.testing.assert_close(delta, torch.tensor([0.0, 2.0]))


def test_tuple_inputs_take_tuple_baselines_and_give_tuple_contributions():
    model = TwoInputs().eval()
    image, vector = torch.randn(3, 1, 6, 6), torch.randn(3, 4)
    start = (torch.zeros(1, 1, 6, 6), 0.5)
    slp = SwitchedLinearProjection(model, model.out, multiply_by_inputs=True)
    contributions, delta = slp.attribute(
        (image, vector), 1, baselines=start, return_convergence_delta=True
    )
    assert isinstance(contributions, tuple) and len(contributions) == 2
    weights = SwitchedLinearProjection(model, model.out).attribute((image, vector), 1)
    torch.testing.assert_close(contributions[0], image * weights[0])
    torch.testing.assert_close(contributions[1], (vector - 0.5) * weights[1])
    with torch.no_grad():
        change = model(image, vector)[:, 1] - model(torch.zeros_like(image), vector * 0 + 0.5)[:, 1]
    total = contributions[0].sum((1, 2, 3)) + contributions[1].sum(1)
    torch.testing.assert_close(delta, change - total, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("baselines", "error", "message"),
    [
        (torch.zeros(2, 3), ValueError, r"baselines\[0\] is shaped \(2, 3\)"),
        ((0.0, 0.0), ValueError, "2 entries for 1 input"),
        ("zero", TypeError, "baselines must be a number"),
    ],
)
def test_bad_baselines_get_clear_errors(baselines, error, message):
    model, layers, shape = build("mlp", 0)
    slp = SwitchedLinearProjection(model, layers["fc3"], multiply_by_inputs=True)
    with pytest.raises(error, match=message):
        slp.attribute(torch.randn(4, *shape), 0, baselines=baselines)


def test_multiply_by_inputs_must_be_a_bool():
    model, layers, _ = build("mlp", 0)
    with pytest.raises(TypeError, match="multiply_by_inputs"):
        SwitchedLinearProjection(model, layers["fc3"], multiply_by_inputs="yes")  # type: ignore[arg-type]


# --- NoiseTunnel and sensitivity_max, with a target per example -----------------------


def record_model_inputs(model: nn.Module) -> tuple[list[Tensor], torch.utils.hooks.RemovableHandle]:
    recorded: list[Tensor] = []
    handle = model.register_forward_pre_hook(
        lambda _m, args: recorded.append(args[0].detach().clone())
    )
    return recorded, handle


@pytest.mark.parametrize("multiply", [False, True])
def test_noise_tunnel_with_per_example_targets_is_the_mean_over_noisy_copies(multiply):
    model, layers, shape = build("cnn", 9)
    x = torch.randn(3, *shape)
    y = torch.tensor([2, 0, 1])
    samples = 4
    slp = SwitchedLinearProjection(model, layers["fc2"], multiply_by_inputs=multiply)
    tunnel = NoiseTunnel(slp)
    recorded, handle = record_model_inputs(model)
    try:
        smoothed = tunnel.attribute(
            x, nt_type="smoothgrad", nt_samples=samples, stdevs=0.3, target=y
        )
    finally:
        handle.remove()
    (noisy,) = recorded  # one forward pass for all noisy copies
    assert noisy.shape == (3 * samples, *shape)
    expected = torch.stack(
        [
            torch.cat(
                [
                    slp.attribute(noisy[i * samples + s : i * samples + s + 1], int(y[i]))
                    for s in range(samples)
                ]
            ).mean(0)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(smoothed, expected)
    assert torch.isfinite(smoothed).all() and smoothed.shape == x.shape


def test_noise_tunnel_without_noise_returns_the_attribution_and_its_delta():
    model, layers, shape = build("cnn", 10)
    x = torch.randn(3, *shape)
    y = [(0,), (2,), (1,)]
    slp = SwitchedLinearProjection(model, layers["fc2"])
    weights, delta = slp.attribute(x, y, return_convergence_delta=True)
    smoothed, tunnel_delta = NoiseTunnel(slp).attribute(
        x, nt_samples=5, stdevs=0.0, target=y, return_convergence_delta=True
    )
    torch.testing.assert_close(smoothed, weights)
    torch.testing.assert_close(tunnel_delta, delta.repeat_interleave(5))
    with_baseline, baseline_delta = NoiseTunnel(slp).attribute(
        x,
        nt_samples=2,
        stdevs=0.0,
        target=torch.tensor([0, 2, 1]),
        baselines=x.flip(0),
        return_convergence_delta=True,
    )
    _, expected_delta = slp.attribute(
        x, [0, 2, 1], baselines=x.flip(0), return_convergence_delta=True
    )
    torch.testing.assert_close(with_baseline, slp.attribute(x, [0, 2, 1]))
    torch.testing.assert_close(baseline_delta, expected_delta.repeat_interleave(2))
    noisy, noisy_delta = NoiseTunnel(slp).attribute(
        x, nt_samples=3, stdevs=0.5, target=torch.tensor([0, 2, 1]), return_convergence_delta=True
    )
    assert noisy.shape == x.shape and noisy_delta.shape == (9,)
    assert torch.isfinite(noisy).all() and torch.isfinite(noisy_delta).all()


def test_sensitivity_max_with_per_example_targets_matches_a_plain_loop():
    model, layers, shape = build("cnn", 11)
    x = torch.randn(3, *shape)
    y = torch.tensor([1, 0, 2])
    slp = SwitchedLinearProjection(model, layers["fc2"])

    def shift(inputs: Tensor) -> Tensor:
        return inputs + 0.05

    sensitivity = sensitivity_max(
        slp.attribute, x, perturb_func=shift, n_perturb_samples=2, target=y
    )
    expected = []
    for i in range(3):
        here = slp.attribute(x[i : i + 1], int(y[i]))
        there = slp.attribute(shift(x[i : i + 1]), int(y[i]))
        expected.append((there - here).norm() / here.norm())
    torch.testing.assert_close(sensitivity, torch.stack(expected))
    noisy = sensitivity_max(slp.attribute, x, n_perturb_samples=3, target=y)
    assert noisy.shape == (3,) and torch.isfinite(noisy).all()
