"""SwitchedLinearProjection takes Captum's neuron-method forms: the selector second
positionally, a selector returning one element for the batch, slices,
``attribute_to_neuron_input`` and ``device_ids``; checked against Captum's
NeuronGradient on Captum's own basic models (the switched weights are its
gradient)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NeuronGradient

# Captum's test helpers ship in the wheel from captum 0.9 on; the floors run (0.8) skips
pytest.importorskip("captum.testing", reason="captum.testing ships with captum 0.9 and later")
from captum.testing.helpers.basic_models import (
    BasicModel_ConvNet,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
)

from captum_ssa import SwitchedLinearProjection


def assert_same(a, b) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q)
    else:
        torch.testing.assert_close(a, b)


# Captum's tests of NeuronGradient (test_neuron_gradient.py): the expected
# numbers are Captum's, for BasicModel_MultiLayer and the input [[0, 5, 4]]
@pytest.mark.parametrize(
    ("layer", "selector", "expected", "to_input"),
    [
        ("relu", lambda out: torch.sum(out), [[3.0, 3.0, 3.0]], False),
        ("relu", (slice(0, 2, 1),), [[1.0, 1.0, 1.0]], False),
        ("relu", 1, [[1.0, 1.0, 1.0]], False),
        ("relu", 0, [[0.0, 0.0, 0.0]], False),
        ("relu", (0,), [[1.0, 1.0, 1.0]], True),
    ],
    ids=["sum-selector", "slice", "int", "inactive", "neuron-input"],
)
@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "inplace-relu"])
def test_captum_positional_selector_gives_neuron_gradients_numbers(
    layer, selector, expected, to_input, inplace
):
    net = BasicModel_MultiLayer(inplace=inplace)
    inputs = torch.tensor([[0.0, 5.0, 4.0]])
    weights = SwitchedLinearProjection(net, getattr(net, layer)).attribute(
        inputs, selector, attribute_to_neuron_input=to_input
    )
    torch.testing.assert_close(weights, torch.tensor(expected))


@pytest.mark.parametrize(
    "selector",
    [
        lambda out: torch.sum(out),  # one element for the whole batch
        lambda out: out[:, 1].sum((1, 2)),
        (slice(0, 2, 1), 1, slice(0, 2, 1)),
        (0, 1, 0),
        0,
    ],
    ids=["batch-sum", "channel-sum", "slices", "unit", "int"],
)
@pytest.mark.parametrize("to_input", [False, True], ids=["output", "input"])
def test_equals_neuron_gradient_on_a_batch(selector, to_input):
    net = BasicModel_ConvNet()
    inputs = torch.randn(4, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    layer = net.relu2 if to_input else net.conv2  # relu2's input is conv2's output
    if isinstance(selector, int):  # a unit only of a (N, K) output (of a conv, a channel)
        net = BasicModel_MultiLayer()
        layer = net.relu if to_input else net.linear1
        inputs = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    expected = NeuronGradient(net, layer).attribute(
        inputs, selector, attribute_to_neuron_input=to_input
    )
    slp = SwitchedLinearProjection(net, layer)
    assert_same(slp.attribute(inputs, selector, attribute_to_neuron_input=to_input), expected)
    assert_same(
        slp.attribute(inputs, neuron_selector=selector, attribute_to_neuron_input=to_input),
        expected,
    )


def test_multi_input_function_selector_equals_neuron_gradient_and_decomposes():
    net = BasicModel_MultiLayer_MultiInput()
    generator = torch.Generator().manual_seed(1)
    inputs = (
        10 * torch.randn(12, 3, generator=generator),
        5 * torch.randn(12, 3, generator=generator),
    )
    extra = (2 * torch.randn(12, 3, generator=generator), 5)
    selector = lambda out: torch.sum(out, 1)  # noqa: E731
    expected = NeuronGradient(net, net.model.relu).attribute(inputs, selector, extra)
    slp = SwitchedLinearProjection(net, net.model.relu)
    assert_same(slp.attribute(inputs, selector, extra), expected)
    projection = slp.project(inputs, selector, extra)
    joint = extra[1] * (inputs[0] + inputs[1] + extra[0])
    activity = selector(net.model.relu(net.model.linear1(joint)))
    torch.testing.assert_close(projection.activity, activity)


def test_a_one_element_selector_gives_each_example_its_own_activity():
    net = BasicModel_MultiLayer()
    inputs = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    slp = SwitchedLinearProjection(net, net.relu)
    batch = slp.project(inputs, lambda out: torch.sum(out))
    for example in range(len(inputs)):
        alone = slp.project(inputs[example : example + 1], lambda out: torch.sum(out))
        torch.testing.assert_close(batch.activity[example : example + 1], alone.activity)
        torch.testing.assert_close(batch.weights[example : example + 1], alone.weights)
    torch.testing.assert_close(batch.activity, net.relu(net.linear1(inputs)).sum(1))


def test_a_selector_that_is_not_one_value_per_example_alone_is_an_error():
    net = BasicModel_MultiLayer()
    slp = SwitchedLinearProjection(net, net.relu)
    with pytest.raises(ValueError, match="one element for the whole batch"):
        slp.attribute(torch.randn(3, 3), lambda out: out.sum() if len(out) > 1 else out[0, :2])


def test_neuron_input_delta_and_compute_convergence_delta_agree():
    net = BasicModel_MultiLayer()
    inputs = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    slp = SwitchedLinearProjection(net, net.linear2, multiply_by_inputs=True)
    attributions, delta = slp.attribute(
        inputs, 2, baselines=0.0, return_convergence_delta=True, attribute_to_neuron_input=True
    )
    recomputed = slp.compute_convergence_delta(
        attributions, 0.0, inputs, 2, attribute_to_neuron_input=True
    )
    torch.testing.assert_close(delta, recomputed)
    # linear2's input is relu's output: the same neuron as relu's output 2
    same_neuron = SwitchedLinearProjection(net, net.relu, multiply_by_inputs=True)
    torch.testing.assert_close(attributions, same_neuron.attribute(inputs, 2, baselines=0.0))


def test_a_bool_selector_is_an_error_that_names_attribute_to_neuron_input():
    net = BasicModel_MultiLayer()
    slp = SwitchedLinearProjection(net, net.relu)
    # Captum's fourth positional argument is attribute_to_neuron_input, ours neuron_selector
    with pytest.raises(TypeError, match="attribute_to_neuron_input"):
        slp.attribute(torch.randn(2, 3), None, None, True)


def test_an_int_or_tuple_second_means_the_same_as_a_selector():
    net = BasicModel_ConvNet()
    inputs = torch.randn(3, 1, 10, 10, generator=torch.Generator().manual_seed(4))
    slp = SwitchedLinearProjection(net, net.conv2)
    torch.testing.assert_close(
        slp.attribute(inputs, (1, 1, 0)), slp.attribute(inputs, neuron_selector=(1, 1, 0))
    )


def test_device_ids_are_stored_and_checked():
    net = BasicModel_MultiLayer()
    assert SwitchedLinearProjection(net, net.relu, device_ids=[0, 1]).device_ids == [0, 1]
    assert SwitchedLinearProjection(net, net.relu).device_ids is None
    with pytest.raises(TypeError, match="device_ids"):
        SwitchedLinearProjection(net, net.relu, device_ids="cuda:0")
