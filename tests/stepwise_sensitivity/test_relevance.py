"""Step I pieces: gradients seeded below a Linear/Conv, direct connections, pluggable relevance."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import IntegratedGradients, LayerGradientXActivation
from torch import Tensor, nn

from captum_ssa._core.stepwise_sensitivity import StepwiseSensitivity, segment
from captum_ssa._core.stepwise_sensitivity.segment import (
    activity_gradients,
    elementwise_derivative,
    mean_gradient_magnitudes,
    seeds_at_layer_input,
)
from captum_ssa._core.stepwise_sensitivity.weighted_connection import (
    WeightedCall,
    connecting_layer,
    record_weighted_calls,
)
from captum_ssa._utils.hooks import observe_layer_calls, run_and_capture
from captum_ssa.relevance import CaptumRelevance, LayerPair, resolve_relevance


class Sandwich(nn.Module):
    """lower layer -> ReLU -> max-pool (2-D maps only) -> upper layer."""

    def __init__(self, lower: nn.Module, upper: nn.Module, pool: bool) -> None:
        super().__init__()
        self.lower = lower
        self.upper = upper
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.upper(self.pool(torch.relu(self.lower(x))))


def observed(model: Sandwich, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    inputs = (x.requires_grad_(),)
    with observe_layer_calls([model.lower, model.upper], [False, True]) as calls:
        _, (lower, upper) = run_and_capture(model, inputs, [model.lower, model.upper])
    return lower, upper, calls.inputs[1]


def per_neuron_gradient(model: Sandwich, x: Tensor, neuron: int) -> Tensor:
    """The plain way: a fresh forward pass and a backward from the activity."""
    lower, upper, _ = observed(model, x.clone())
    activity = upper[:, neuron].reshape(len(x), -1).mean(1).sum()
    return torch.autograd.grad(activity, lower)[0]


SANDWICHES = {
    "linear": (lambda: nn.Linear(5, 7), lambda: nn.Linear(7, 4), (5,), False),
    "conv1d_strided": (
        lambda: nn.Conv1d(2, 4, 3),
        lambda: nn.Conv1d(4, 3, 3, stride=2, padding=2, dilation=2),
        (2, 12),
        False,
    ),
    "conv2d_pooled": (
        lambda: nn.Conv2d(2, 4, 3, padding=1),
        lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        (2, 9, 9),
        True,
    ),
    "conv3d": (lambda: nn.Conv3d(1, 2, 2), lambda: nn.Conv3d(2, 3, (2, 1, 2)), (1, 4, 5, 4), False),
}


@pytest.fixture(params=["vectorised", "one_neuron_per_pass"])
def backward_strategy(request, monkeypatch):
    """Run a test with several neurons per backward pass, and with one."""
    if request.param == "one_neuron_per_pass":
        monkeypatch.setattr(segment, "VECTORISED_GRADIENT_ELEMENTS", 0)
    return request.param


@pytest.mark.parametrize("name", SANDWICHES)
def test_seed_below_the_upper_layer_equals_a_backward_from_each_neuron(name, backward_strategy):
    make_lower, make_upper, shape, pool = SANDWICHES[name]
    torch.manual_seed(0)
    model = Sandwich(make_lower(), make_upper(), pool).eval()
    x = torch.randn(3, *shape)
    lower, upper, upper_input = observed(model, x.clone())
    neurons = torch.arange(upper.shape[1])
    assert seeds_at_layer_input(model.upper, upper_input, upper, neurons) is not None
    seeded = activity_gradients(lower, model.upper, upper, upper_input, neurons, lambda g: g)
    from_output = activity_gradients(lower, model.upper, upper, None, neurons, lambda g: g)
    for neuron in neurons.tolist():
        expected = per_neuron_gradient(model, x, neuron)
        torch.testing.assert_close(seeded[neuron], expected)
        torch.testing.assert_close(from_output[neuron], expected)


class TinyLinear(nn.Linear):
    """A subclass may change forward, so it is never seeded below the layer."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


@pytest.mark.parametrize(
    "make_upper",
    [
        lambda: nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect"),
        lambda: nn.Conv2d(4, 3, 3, padding="same"),
        lambda: TinyLinear(4 * 4 * 4, 3),
    ],
)
def test_layers_whose_input_gradient_is_not_fixed_by_the_weights_seed_at_the_output(
    make_upper, backward_strategy
):
    torch.manual_seed(0)
    upper = make_upper()
    if isinstance(upper, nn.Linear):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), upper).eval()
    else:
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), upper).eval()
    x = torch.randn(2, 1, 6, 6)
    inputs = (x.requires_grad_(),)
    with observe_layer_calls([model[0], upper], [False, True]) as calls:
        _, (lower_output, upper_output) = run_and_capture(model, inputs, [model[0], upper])
    neurons = torch.arange(3)
    assert seeds_at_layer_input(upper, calls.inputs[1], upper_output, neurons) is None
    gradients = activity_gradients(
        lower_output, upper, upper_output, calls.inputs.get(1), neurons, lambda g: g
    )
    for neuron in range(3):
        activity = upper_output[:, neuron].reshape(2, -1).mean(1).sum()
        (expected,) = torch.autograd.grad(activity, lower_output, retain_graph=True)
        torch.testing.assert_close(gradients[neuron], expected)


def connection(model: nn.Module, lower: nn.Module, upper: nn.Module, x: Tensor) -> WeightedCall:
    """The weighted layer SSA finds between two listed modules, as in ``attribute``."""
    inputs = (x.requires_grad_(),)
    with (
        record_weighted_calls(list(model.modules())) as calls,
        observe_layer_calls([lower, upper], [False, True]),
    ):
        _, (lower_output, upper_output) = run_and_capture(model, inputs, [lower, upper])
    return connecting_layer(upper_output, lower_output, calls)


class Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1(x)
        return self.fc2(torch.relu(hidden) + hidden.sin())


class Functional(nn.Module):
    """A matrix product that is not a module: its weights are nobody's."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.relu = nn.ReLU()
        self.matrix = nn.Parameter(torch.randn(4, 2))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.relu(self.fc(x)) @ self.matrix)


def paper_cnn() -> nn.Sequential:
    """conv-ReLU-maxpool-conv-ReLU-avgpool-flatten-fc-ReLU-fc, the paper's Conv-Net shape."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    ).eval()


@pytest.mark.parametrize(
    ("lower", "upper", "weighted"),
    [
        (1, 5, 3),  # ReLU -> max-pool -> conv -> batch norm -> ReLU
        (2, 6, 3),  # max-pool -> conv -> batch norm -> ReLU -> adaptive avg-pool
        (5, 10, 9),  # ReLU -> avg-pool -> flatten -> dropout -> fc -> ReLU
        (6, 9, 9),  # the weighted layer listed itself
        (10, 11, 11),
        (0, 3, 3),  # conv -> ReLU (in place) -> max-pool -> conv
    ],
)
def test_the_connecting_layer_is_found_through_activations_pooling_and_reshapes(
    lower, upper, weighted
):
    model = paper_cnn()
    call = connection(model, model[lower], model[upper], torch.randn(2, 1, 10, 10))
    assert call.module is model[weighted]


@pytest.mark.parametrize(
    ("make", "lower", "upper", "shape", "message"),
    [
        (paper_cnn, 1, 10, (1, 10, 10), "two weighted layers"),
        (paper_cnn, 3, 6, (1, 10, 10), "no nn.Linear or nn.Conv1d/2d/3d module"),
        (Skip, "fc1", "fc2", (4,), r"\(Add\) combines several paths"),
        (Functional, "fc", None, (3,), r"mixes neurons \(Mm\)"),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(1), nn.Linear(4, 2)),
            "0",
            "2",
            (3,),
            r"mixes neurons \(Softmax\)",
        ),
    ],
)
def test_no_single_connecting_layer_is_a_clear_error(make, lower, upper, shape, message):
    torch.manual_seed(0)
    model = make().eval()
    modules = dict(model.named_modules())
    lower_module = model[lower] if isinstance(lower, int) else modules[lower]
    upper_module = (
        model if upper is None else (model[upper] if isinstance(upper, int) else modules[upper])
    )
    with pytest.raises(ValueError, match=message):
        connection(model, lower_module, upper_module, torch.randn(2, *shape))


def test_a_callable_is_a_relevance_function_and_its_shape_is_checked():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    ssa = StepwiseSensitivity(model, [model[0], model[2]])
    x = torch.randn(4, 3)

    def second_neuron_only(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        values = torch.zeros(len(upper_neurons), len(pair.lower_output), 5)
        values[..., 1] = 1.0
        return values

    graph = ssa.attribute(x, target=0, relevance=second_neuron_only, branching=1)
    assert graph.neurons("0").tolist() == [1]
    assert graph.metadata["relevance"] == "second_neuron_only"

    def wrong_shape(pair: LayerPair, upper_neurons: Tensor, absolute: bool) -> Tensor:
        return torch.zeros(len(upper_neurons), 5)

    with pytest.raises(ValueError, match=r"shaped \(upper neurons, examples, lower neurons\)"):
        ssa.attribute(x, target=0, relevance=wrong_shape)


def test_captum_relevance_needs_a_layer_attribution_and_keeps_the_instance_setting():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    with pytest.raises(TypeError, match="layer attribution"):
        resolve_relevance(IntegratedGradients)
    instance = LayerGradientXActivation(model, model[0], multiply_by_inputs=False)
    function, name = resolve_relevance(instance)
    assert name == "LayerGradientXActivation"
    assert isinstance(function, CaptumRelevance)
    assert function.constructor_kwargs == {"multiply_by_inputs": False}
    x = torch.randn(4, 3)
    ssa = StepwiseSensitivity(model, [model[0], model[2]])
    without_inputs = ssa.attribute(x, target=1, relevance=instance)
    gradient = ssa.attribute(x, target=1, relevance="gradient")
    torch.testing.assert_close(without_inputs.relevance("0"), gradient.relevance("0"))


def test_captum_relevance_passes_attribute_arguments_and_extra_forward_args():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(3, 4)
            self.fc2 = nn.Linear(4, 2)

        def forward(self, x: Tensor, scale: float) -> Tensor:
            return self.fc2(torch.relu(self.fc1(x)) * scale)

    torch.manual_seed(0)
    model = Scaled().eval()
    x = torch.randn(3, 3)
    from captum.attr import LayerIntegratedGradients

    ssa = StepwiseSensitivity(model, [model.fc1, model.fc2])
    calls: list[dict[str, Any]] = []

    class Recording(LayerIntegratedGradients):
        def attribute(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return super().attribute(*args, **kwargs)

    relevance = CaptumRelevance(Recording, n_steps=5)
    doubled = ssa.attribute(x, target=0, additional_forward_args=(2.0,), relevance=relevance)
    single = ssa.attribute(x, target=0, additional_forward_args=(1.0,), relevance=relevance)
    assert all(
        c["n_steps"] == 5 and c["additional_forward_args"] in ((2.0,), (1.0,)) for c in calls
    )
    torch.testing.assert_close(doubled.relevance("fc1"), 2 * single.relevance("fc1"))


DIRECT = {
    "linear": lambda: nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(0.2), nn.Linear(5, 4)),
    "conv_grouped": lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, stride=2, groups=2)
    ),
    "conv_flatten_linear": lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)
    ),
}


@pytest.mark.parametrize("absolute", [True, False])
@pytest.mark.parametrize("name", DIRECT)
def test_factorised_relevance_on_element_wise_paths_equals_per_neuron_backward(name, absolute):
    torch.manual_seed(0)
    model = DIRECT[name]().eval()
    shape = (3,) if name == "linear" else (2, 7, 7)
    inputs = (torch.randn(4, *shape).requires_grad_(),)
    lower, upper = model[0], model[-1]
    with observe_layer_calls([lower, upper], [False, True]) as calls:
        _, (lower_output, upper_output) = run_and_capture(model, inputs, [lower, upper])
    upper_input = calls.inputs[1]
    assert elementwise_derivative(upper_input, lower_output) is not None  # the fast path runs
    neurons = torch.tensor([0, 3, 2])
    activation = lower_output.detach()
    for factor in (None, activation):
        fast = mean_gradient_magnitudes(
            lower_output, upper, upper_output, upper_input, neurons, absolute, factor
        )
        for row, neuron in enumerate(neurons.tolist()):
            activity = upper_output[:, neuron].reshape(4, -1).mean(1).sum()
            (gradient,) = torch.autograd.grad(activity, lower_output, retain_graph=True)
            product = gradient if factor is None else gradient * factor
            product = product.abs() if absolute else product
            torch.testing.assert_close(fast[row], product.reshape(4, product.shape[1], -1).mean(2))


def test_elementwise_derivative_is_the_diagonal_and_absent_where_examples_mix():
    model = nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(0.2), nn.Linear(5, 2)).eval()
    inputs = (torch.randn(6, 3).requires_grad_(),)
    with observe_layer_calls([model[0], model[2]], [False, True]) as calls:
        _, (lower_output, _) = run_and_capture(model, inputs, [model[0], model[2]])
    derivative = elementwise_derivative(calls.inputs[1], lower_output)
    expected = torch.where(lower_output > 0, 1.0, 0.2)
    torch.testing.assert_close(derivative, expected)
    training_bn = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)).train()
    with observe_layer_calls([training_bn[0], training_bn[2]], [False, True]) as calls:
        _, (lower_output, _) = run_and_capture(
            training_bn, inputs, [training_bn[0], training_bn[2]]
        )
    assert elementwise_derivative(calls.inputs[1], lower_output) is None  # examples mix
    # but the weights still connect the layers
    assert (
        connection(training_bn, training_bn[0], training_bn[2], inputs[0]).module
        is (training_bn[2])
    )


class FlatMLP(nn.Module):
    """Flatten -> fc1 -> ReLU -> fc2 -> ReLU -> fc3: LRP has no default rule for Flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(6, 5)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(5, 4)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(self.flatten(x))))))


def test_layer_lrp_relevance_is_activation_times_weight_and_keeps_the_users_rules() -> None:
    # LRP's epsilon rule between two Linear layers gives the lower neuron k the
    # share a_k W[n, k] z_n / (z_n + eps) of the upper neuron's activity z_n,
    # a_k = relu(lower pre-activation): with SSA's mean over the data and |.|,
    # mean_i |relu(z1_ik) W2[n, k]| (eps 1e-9 is negligible here)
    from captum.attr import LayerLRP

    from captum_ssa._utils._compat import EpsilonRule

    torch.manual_seed(0)
    model = FlatMLP().eval()
    model.flatten.rule = EpsilonRule()  # the user's rule; LRP deletes it after each call
    x = torch.randn(12, 2, 3)
    ssa = StepwiseSensitivity(model, [model.fc1, model.fc2, model.fc3])
    graph = ssa.attribute(
        x, top_neurons=[0, 1, 2], relevance=CaptumRelevance(LayerLRP), percentile=0
    )
    with torch.no_grad():
        z1 = model.fc1(model.flatten(x))
        a2 = torch.relu(model.fc2(torch.relu(z1)))
        expected = {
            ("fc2", "fc1"): (torch.relu(z1)[None] * model.fc2.weight[:, None, :]).abs().mean(1),
            ("fc3", "fc2"): (a2[None] * model.fc3.weight[:, None, :]).abs().mean(1),
        }
    for (upper, lower), reference in expected.items():
        rows = graph.neurons(upper)
        assert len(rows) > 1  # several upper neurons: the rule must survive between calls
        torch.testing.assert_close(
            graph.relevance_matrix(upper, lower), reference[rows], rtol=1e-4, atol=1e-6
        )
    assert isinstance(model.flatten.rule, EpsilonRule)
