"""LayeredInfluence: influence, target, layer choice, DeconvNet backprojection, stale fits."""

from __future__ import annotations

import copy
import math
import warnings

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    GradientAttribution,
    LayerAttribution,
    NeuronAttribution,
    NeuronDeconvolution,
    NoiseTunnel,
    visualization,
)
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor, nn

from captum_ssa import ReusedLayerError
from captum_ssa._core.layered_influence import LayeredInfluence
from tests.behaviour import hooks_left
from tests.layered_influence.references import slow_influence
from tests.models import TwoInputs, build, layer_output

matplotlib.use("Agg")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def linear(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float64)
    module = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else torch.tensor(bias))
    return module


class SignOfFirstFeature(nn.Module):
    """layer = identity on R^2, logits (-h0, h0): the label is h0 > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = linear([[1.0, 0.0], [0.0, 1.0]])
        self.head = linear([[-1.0, 0.0], [1.0, 0.0]])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(x))


class AbsoluteValueModel(nn.Module):
    """Label |x0| > 1. identity -> (x0, -x0) -> ReLU -> |x0| - 1 -> logits.

    A linear probe on ``identity`` or ``split`` cannot separate |x0| > 1;
    ``magnitude`` (and the logits) separate it exactly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.identity = linear([[1.0, 0.0], [0.0, 1.0]])
        self.split = linear([[1.0, 0.0], [-1.0, 0.0]])
        self.relu = nn.ReLU()
        self.magnitude = linear([[1.0, 1.0]], [-1.0])
        self.logits = linear([[-1.0], [1.0]])

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.magnitude(self.relu(self.split(self.identity(x)))))


class ConcentratedThenSpread(nn.Module):
    """``concentrated`` = (x0, 0, 0, 0), ``spread`` = (x0, x0, x0, x0), label x0 > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.concentrated = linear([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        self.spread = linear([[1.0, 0.0, 0.0, 0.0]] * 4)
        self.head = linear([[-0.25] * 4, [0.25] * 4])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.spread(self.concentrated(x)))


class ScaledMLP(nn.Module):
    """A model with an extra forward argument."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor, scale: float) -> Tensor:
        return self.fc2(self.relu(self.fc1(x * scale)))


_HEADS = {"cnn": "fc2", "cnn_bn": "fc2", "mlp": "fc3", "residual": "fc_out"}


def zoo_model(name: str, seed: int = 0):
    """A zoo model whose output bias is shifted so that it predicts every class:
    a random network predicts one class almost everywhere, and the influence
    measure needs differently-labelled points."""
    model, layers, shape = build(name, seed)
    calibration = torch.randn(64, *shape, generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        getattr(model, _HEADS[name]).bias -= model(calibration).mean(0)
    return model, layers, shape


def two_class_data(count: int = 200, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.linspace(-2, 2, count, dtype=torch.float64)
    return torch.stack([x0, torch.randn(count, generator=generator, dtype=torch.float64)], 1)


def fitted_cnn(layer: str = "conv2", seed: int = 0, double: bool = False):
    model, layers, shape = zoo_model("cnn", seed)
    if double:
        model = model.double()
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(40, *shape, generator=generator)
    if double:
        reference = reference.double()
    explainer = LayeredInfluence(model, list(layers.values())[:3]).fit(
        reference, layer=getattr(model, layer)
    )
    return model, explainer, reference


# ---------------------------------------------------------------- influence


def test_influence_equals_the_pair_loop_on_model_activations():
    model, explainer, reference = fitted_cnn("conv2", double=True)
    queries = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    influence = explainer.influence(queries)
    with torch.no_grad():
        query_labels, reference_labels = model(queries).argmax(1), model(reference).argmax(1)
    expected = slow_influence(
        layer_output(model, model.conv2, queries).flatten(1),
        query_labels,
        layer_output(model, model.conv2, reference).flatten(1),
        reference_labels,
    )
    assert influence.shape == (3, 5, 4, 4)
    torch.testing.assert_close(influence.flatten(1), expected, rtol=1e-8, atol=1e-10)


def test_influence_known_answer_and_reconstruction():
    model = SignOfFirstFeature()
    reference = torch.tensor(
        [[-1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 5.0]], dtype=torch.float64
    )
    explainer = LayeredInfluence(model, model.layer).fit(reference, layer=model.layer)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # (2, 0)/4 + (2, -1)/5 + (2, 1)/5 = (1.3, 0): the first feature decides
    torch.testing.assert_close(explainer.influence(query), torch.tensor([[1.3, 0.0]]).double())
    # the top unit (unit 0) keeps its activation 1 and goes back through the identity
    torch.testing.assert_close(
        explainer.attribute(query, top_k=1), torch.tensor([[1.0, 0.0]]).double()
    )


def test_permuting_the_reference_set_changes_nothing():
    model, explainer, reference = fitted_cnn("fc1", double=True)
    permuted = LayeredInfluence(model, model.fc1).fit(
        reference[torch.randperm(len(reference), generator=torch.Generator().manual_seed(1))]
    )
    queries = torch.randn(4, 1, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(explainer.influence(queries), permuted.influence(queries))


def test_batched_and_iterable_reference_equal_one_tensor():
    model, explainer, reference = fitted_cnn("conv1", double=True)
    loader = [(reference[:15], torch.zeros(15)), (reference[15:], torch.zeros(25))]
    batched = LayeredInfluence(model, [model.conv1, model.conv2, model.fc1]).fit(
        loader, batch_size=7, layer="conv1"
    )
    queries = torch.randn(2, 1, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(explainer.influence(queries), batched.influence(queries))
    assert batched.reference_size == len(reference) == explainer.reference_size


def test_alpha_is_pluggable():
    model = SignOfFirstFeature()
    reference = torch.tensor([[-1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    explainer = LayeredInfluence(model, model.layer).fit(reference)
    query = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    constant = explainer.influence(query, alpha=lambda r: torch.full_like(r, 2.0))
    torch.testing.assert_close(constant, torch.tensor([[8.0, 0.0]]).double())  # 2 * (3 - (-1))


def test_alpha_in_float64_on_a_float32_model():
    explainer = fitted_cnn("conv2")[1]
    inputs = torch.randn(3, 1, 10, 10)
    in_float64 = explainer.attribute(inputs, alpha=lambda r: 1 / (1 + r.double()))
    in_float32 = explainer.attribute(inputs, alpha=lambda r: 1 / (1 + r))
    torch.testing.assert_close(in_float64, in_float32)


def test_a_near_differently_labelled_point_counts_in_float32():
    model = SignOfFirstFeature().float()
    # the last point is 1e-4 from the query, on the other side of x0 = 0
    reference = torch.tensor([[-1.0, 0.0], [1.0, 5.0], [-2.0, -3.0], [-5e-5, 50.0]])
    explainer = LayeredInfluence(model, model.layer).fit(reference)
    query = torch.tensor([[5e-5, 50.0]])
    influence = explainer.influence(query)
    # the pair loop in float64 on the layer's (float32) activations
    expected = slow_influence(
        query.double(), torch.tensor([1]), reference.double(), torch.tensor([0, 1, 0, 0])
    )
    assert expected[0, 0] > 9e3  # the near point's 1/r
    torch.testing.assert_close(influence.double(), expected, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- target


def test_default_target_is_the_prediction():
    model, explainer, _ = fitted_cnn("conv2", double=True)
    inputs = torch.randn(5, 1, 10, 10, dtype=torch.float64)
    with torch.no_grad():
        predictions = model(inputs).argmax(1)
    assert torch.equal(explainer.influence(inputs), explainer.influence(inputs, target=predictions))
    assert torch.equal(explainer.attribute(inputs), explainer.attribute(inputs, target=predictions))


@pytest.mark.parametrize(
    "target",
    [2, torch.tensor(1), torch.tensor([0, 2, 1]), np.array([1, 1, 0]), [2, 0, 0], np.int64(1)],
    ids=["int", "0-d tensor", "tensor", "numpy", "list", "numpy int"],
)
def test_target_equals_the_pair_loop_with_those_classes(target):
    model, explainer, reference = fitted_cnn("conv2", double=True)
    inputs = torch.randn(3, 1, 10, 10, dtype=torch.float64)
    classes = torch.as_tensor(target).expand(3)
    with torch.no_grad():
        reference_labels = model(reference).argmax(1)
    expected = slow_influence(
        layer_output(model, model.conv2, inputs).flatten(1),
        classes,
        layer_output(model, model.conv2, reference).flatten(1),
        reference_labels,
    )
    influence = explainer.influence(inputs, target=target)
    torch.testing.assert_close(influence.flatten(1), expected, rtol=1e-8, atol=1e-10)


def test_target_known_answer():
    model = SignOfFirstFeature()
    reference = torch.tensor(
        [[-1.0, 0.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, 5.0]], dtype=torch.float64
    )
    explainer = LayeredInfluence(model, model.layer).fit(reference)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # predicted 1
    # explained as class 0: only the class-1 point (1, 5) counts, (0, -5) / 25
    torch.testing.assert_close(
        explainer.influence(query, target=0), torch.tensor([[0.0, -0.2]]).double()
    )
    torch.testing.assert_close(explainer.influence(query, target=1), explainer.influence(query))


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (3, "from 0 to 2"),
        (-1, "from 0 to 2"),
        ([0, 1], "2 classes for 3 examples"),
        (torch.tensor([0.0, 1.0, 1.0]), "class index"),
        (torch.tensor([[0], [1], [1]]), "class index"),
        ((0, 1), "class index"),
        (True, "class index"),
        ([0, 1.5, 1], "class index"),
    ],
)
def test_bad_target(target, match):
    explainer = fitted_cnn("conv2")[1]
    for call in (explainer.influence, explainer.attribute):
        with pytest.raises(ValueError, match=match) as raised:
            call(torch.randn(3, 1, 10, 10), target=target)
        assert "target" in str(raised.value)


def test_single_logit_target_has_classes_zero_and_one():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -1.0, 0.5]]))
    explainer = LayeredInfluence(model, model[0]).fit(two_class_data(40))
    inputs = two_class_data(4, seed=1)
    assert explainer.influence(inputs, target=[0, 1, 1, 0]).shape == (4, 3)
    with pytest.raises(ValueError, match="target must be a class from 0 to 1"):
        explainer.influence(inputs, target=2)


def test_per_example_target_through_captum_metrics_and_noise_tunnel():
    model, explainer, _ = fitted_cnn("conv1")
    inputs = torch.randn(3, 1, 10, 10)
    with torch.no_grad():
        target = (model(inputs).argmax(1) + 1) % 3  # not the prediction
    sensitivity = sensitivity_max(explainer.attribute, inputs, target=target, n_perturb_samples=3)
    assert sensitivity.shape == (3,) and torch.isfinite(sensitivity).all()
    tunnel = NoiseTunnel(explainer)
    smoothed = tunnel.attribute(inputs, nt_samples=3, target=target)
    assert smoothed.shape == inputs.shape and torch.isfinite(smoothed).all()
    # without noise the tunnel averages three copies of the attribution for target
    exact = tunnel.attribute(inputs, nt_samples=3, stdevs=0.0, target=target)
    torch.testing.assert_close(exact, explainer.attribute(inputs, target=target))
    assert not torch.allclose(exact, explainer.attribute(inputs))


# ---------------------------------------------------------------- layer choice


def test_linear_criterion_picks_the_lowest_separating_layer():
    model = AbsoluteValueModel()
    # listed out of order: "lowest" is the first to run, not the first listed
    layers = [model.logits, model.split, model.magnitude, model.identity]
    explainer = LayeredInfluence(model, layers).fit(two_class_data())
    assert explainer.chosen_layer is model.magnitude
    assert explainer.chosen_layer_name == "magnitude"
    scores = explainer.layer_scores
    assert list(scores) == ["identity", "split", "magnitude", "logits"]
    assert scores["magnitude"] == pytest.approx(1.0, abs=0.011)
    assert scores["logits"] == pytest.approx(1.0, abs=0.011)
    assert scores["identity"] < 0.8 and scores["split"] < 0.8


def test_linear_criterion_tolerance_moves_the_choice_down():
    model = AbsoluteValueModel()
    explainer = LayeredInfluence(model, [model.identity, model.magnitude, model.logits])
    explainer.fit(two_class_data(), tolerance=0.6)
    assert explainer.chosen_layer is model.identity


def test_dispersion_criterion_known_scores():
    model = ConcentratedThenSpread()
    explainer = LayeredInfluence(model, [model.spread, model.concentrated])
    explainer.fit(two_class_data(60), criterion="dispersion")
    # mean |phi| is (a, 0, 0, 0) on one layer, (a, a, a, a) on the other
    assert explainer.layer_scores == pytest.approx({"concentrated": 0.75, "spread": 0.0}, abs=1e-9)
    assert explainer.chosen_layer is model.concentrated


def test_given_layer_skips_scoring():
    model, explainer, _ = fitted_cnn("conv2")
    assert explainer.chosen_layer is model.conv2
    assert explainer.layer_scores == {}


# ---------------------------------------------------------------- DeconvNet


@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc1"])
def test_backprojection_equals_captum_neuron_deconvolution(layer):
    model, explainer, _ = fitted_cnn(layer)
    inputs = torch.randn(3, 1, 10, 10)
    top_fraction = 0.05
    reconstruction = explainer.attribute(inputs, top_fraction=top_fraction)

    influence = explainer.influence(inputs).flatten(1).abs()
    count = math.ceil(top_fraction * influence.shape[1])
    activation = layer_output(model, getattr(model, layer), inputs)
    mask = torch.zeros_like(influence)
    mask.scatter_(1, influence.topk(count, dim=1).indices, 1.0)
    seed = activation * mask.reshape(activation.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = NeuronDeconvolution(model, getattr(model, layer)).attribute(
            inputs.clone().requires_grad_(), lambda output: (output * seed).flatten(1).sum(1)
        )
    assert torch.count_nonzero(mask[0]) == count
    torch.testing.assert_close(reconstruction, expected, rtol=1e-6, atol=1e-7)


def test_backprojection_by_hand_on_an_mlp():
    model, layers, _ = zoo_model("mlp")  # fc1 -> ReLU -> fc2 -> ReLU(inplace) -> fc3
    reference = torch.randn(30, 6)
    explainer = LayeredInfluence(model, layers["fc2"]).fit(reference)
    inputs = torch.randn(4, 6)
    seed = layer_output(model, layers["fc2"], inputs)  # every unit kept
    # DeconvNet: linear layers transpose, the ReLU passes the ReLU of its gradient
    expected = F.relu(seed @ model.fc2.weight) @ model.fc1.weight
    torch.testing.assert_close(explainer.attribute(inputs, top_k=7), expected.detach())


def test_functional_relu_warns():
    model, layers, _ = zoo_model("residual")  # F.relu everywhere
    explainer = LayeredInfluence(model, layers["block2"]).fit(torch.randn(40, 5))
    with pytest.warns(UserWarning, match=r"functional \(F\.relu"):
        explainer.attribute(torch.randn(2, 5))


def test_module_relus_do_not_warn():
    explainer = fitted_cnn("fc1")[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer.attribute(torch.randn(2, 1, 10, 10))
    assert not [w for w in caught if "functional" in str(w.message)]


def activation_mlp(*activations: nn.Module) -> nn.Sequential:
    """Linear, activation, Linear, ... ending in a 2-class head that predicts both classes."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(4, 6)]
    for activation in activations:
        layers += [activation, nn.Linear(6, 6)]
    model = nn.Sequential(*layers, nn.Linear(6, 2)).eval()
    with torch.no_grad():
        model[-1].bias -= model(torch.randn(64, 4)).mean(0)
    return model


@pytest.mark.parametrize(
    ("activations", "message"),
    [
        ((nn.ReLU6(),), r"1 activation\(s\) are not nn\.ReLU \(ReLU6\)"),
        ((nn.LeakyReLU(0.1),), r"1 activation\(s\) are not nn\.ReLU \(LeakyReLU\)"),
        ((nn.GELU(),), r"1 activation\(s\) are not nn\.ReLU \(GELU\)"),
        (
            (nn.LeakyReLU(0.1, inplace=True), nn.ReLU(), nn.GELU()),
            r"2 activation\(s\) are not nn\.ReLU \(GELU, LeakyReLU\)",
        ),
    ],
)
def test_activation_modules_deconvnet_cannot_override_warn(activations, message):
    model = activation_mlp(*activations)
    explainer = LayeredInfluence(model, model[-2]).fit(torch.randn(40, 4))
    with pytest.warns(UserWarning, match=message) as caught:
        explainer.attribute(torch.randn(2, 4))
    assert len([w for w in caught if "DeconvNet" in str(w.message)]) == 1
    assert caught[0].filename == __file__


def test_activations_after_the_layer_and_relu_modules_do_not_warn():
    model = activation_mlp(nn.ReLU(), nn.ReLU(inplace=True), nn.GELU(), nn.Tanh())
    explainer = LayeredInfluence(model, model[4]).fit(torch.randn(40, 4))  # before GELU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.attribute(torch.randn(2, 4))


class FunctionalActivations(nn.Module):
    """Linear layers with activations applied as functions, as transformers blocks apply
    GELU: no activation module for DeconvNet (or a module-class check) to see."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.activation = activation
        with torch.no_grad():  # both classes predicted
            self.head.bias -= self(torch.randn(64, 4)).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.relu1(self.fc1(x))
        if self.activation == "gelu":
            hidden = F.gelu(hidden)
        elif self.activation == "silu and tanh":
            hidden = torch.tanh(F.silu(hidden))
        return self.head(self.relu2(self.fc2(hidden)))


@pytest.mark.parametrize(
    ("activation", "message"),
    [
        ("gelu", r"1 activation\(s\) are not nn\.ReLU \(Gelu \(functional\)\)"),
        (
            "silu and tanh",
            r"2 activation\(s\) are not nn\.ReLU \(Silu \(functional\), Tanh \(functional\)\)",
        ),
    ],
)
def test_functional_activations_are_read_from_the_graph_and_named(activation, message):
    model = FunctionalActivations(activation).eval()
    explainer = LayeredInfluence(model, model.fc2).fit(torch.randn(40, 4))
    with pytest.warns(UserWarning, match=message) as caught:
        explainer.attribute(torch.randn(2, 4))
    assert len([w for w in caught if "DeconvNet" in str(w.message)]) == 1
    assert caught[0].filename == __file__


def test_a_relu_model_with_no_functional_activation_does_not_warn():
    model = FunctionalActivations("none").eval()
    explainer = LayeredInfluence(model, model.fc2).fit(torch.randn(40, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.attribute(torch.randn(2, 4))


def test_top_fraction_counts_units():
    explainer = fitted_cnn("conv2")[1]  # 5 x 4 x 4 = 80 units
    inputs = torch.randn(1, 1, 10, 10)
    for fraction, expected_units in [(0.001, 1), (0.013, 2), (0.025, 2), (0.1, 8), (1.0, 80)]:
        by_fraction = explainer.attribute(inputs, top_fraction=fraction)
        by_count = explainer.attribute(inputs, top_k=expected_units)
        torch.testing.assert_close(by_fraction, by_count)


# ---------------------------------------------------------------- Captum interop


def test_captum_metrics_and_visualisation():
    model, explainer, _ = fitted_cnn("conv1")
    inputs = torch.randn(2, 1, 10, 10)
    attributions = explainer.attribute(inputs)

    def perturb(x: Tensor):
        noise = 0.01 * torch.randn_like(x)
        return noise, x - noise

    score = infidelity(model, perturb, inputs, attributions, target=0, n_perturb_samples=4)
    assert score.shape == (2,) and torch.isfinite(score).all()
    with torch.no_grad():
        sensitivity = sensitivity_max(explainer.attribute, (inputs,), n_perturb_samples=3)
    assert sensitivity.shape == (2,) and torch.isfinite(sensitivity).all()
    figure, _ = visualization.visualize_image_attr(
        attributions[0].permute(1, 2, 0).numpy(), method="heat_map", sign="all", use_pyplot=False
    )
    assert figure is not None


def test_tuple_inputs_give_tuple_outputs():
    torch.manual_seed(0)
    model = TwoInputs().eval()
    reference = (torch.randn(40, 1, 6, 6), torch.randn(40, 4))
    with torch.no_grad():
        model.out.bias -= model(*reference).mean(0)
    explainer = LayeredInfluence(model, model.fc).fit(reference)
    inputs = (torch.randn(2, 1, 6, 6), torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TwoInputs uses F.relu
        result = explainer.attribute(inputs, top_fraction=0.5)
    assert isinstance(result, tuple)
    assert [r.shape for r in result] == [i.shape for i in inputs]


def test_additional_forward_args():
    torch.manual_seed(0)
    model = ScaledMLP().eval()
    reference = torch.randn(40, 4)
    explainer = LayeredInfluence(model, model.fc1).fit(reference, additional_forward_args=2.0)
    inputs = torch.randn(3, 4)
    scaled = explainer.attribute(inputs, top_k=6, additional_forward_args=2.0)
    # all units kept: DeconvNet of fc1(2x) is 2 * W^T seed
    seed = model.fc1(2.0 * inputs).detach()
    torch.testing.assert_close(scaled, 2.0 * seed @ model.fc1.weight.detach())


def test_a_neuron_attribution_and_a_gradient_attribution():
    explainer = fitted_cnn("conv2")[1]
    assert isinstance(explainer, NeuronAttribution)
    assert isinstance(explainer, GradientAttribution)
    assert not isinstance(explainer, LayerAttribution)  # its output is input-shaped
    assert not explainer.multiplies_by_inputs


# ---------------------------------------------------------------- behaviour


@pytest.mark.parametrize("device", DEVICES)
def test_batch_equals_per_example_on_device(device):
    model, explainer, reference = fitted_cnn("conv2")
    model.to(device)
    explainer.fit(reference.to(device), layer="conv2")
    inputs = torch.randn(4, 1, 10, 10, device=device)
    batch = explainer.attribute(inputs)
    single = torch.cat([explainer.attribute(inputs[i : i + 1]) for i in range(4)])
    assert batch.device == inputs.device
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)


def test_inplace_relu_after_the_layer():
    model, explainer, reference = fitted_cnn("conv1")  # relu1 is inplace
    assert model.relu1.inplace
    plain = copy.deepcopy(model)
    plain.relu1.inplace = False
    plain_explainer = LayeredInfluence(plain, plain.conv1).fit(reference)
    inputs = torch.randn(3, 1, 10, 10)
    torch.testing.assert_close(explainer.influence(inputs), plain_explainer.influence(inputs))
    torch.testing.assert_close(explainer.attribute(inputs), plain_explainer.attribute(inputs))


def test_leaves_no_trace():
    model, explainer, _ = fitted_cnn("conv2")
    inputs = torch.randn(2, 1, 10, 10)
    marker = torch.ones_like(model.conv1.weight)
    model.conv1.weight.grad = marker
    explainer.attribute(inputs)
    assert hooks_left(model) == 0
    assert not model.training and not inputs.requires_grad
    assert model.conv1.weight.grad is marker and model.fc1.weight.grad is None
    with pytest.raises(ValueError, match="top_fraction"):
        explainer.attribute(torch.randn(2, 1, 10, 10), top_fraction=2.0)
    with pytest.raises(ValueError, match="fit on inputs shaped like these"):
        explainer.attribute(torch.randn(2, 1, 12, 12))  # conv2 grows to 5 x 5
    with pytest.raises(RuntimeError):
        explainer.attribute(torch.randn(2, 1, 9, 9))  # the model's fc cannot take it
    assert hooks_left(model) == 0


def test_leaves_no_trace_when_deconvnet_fails():
    class FailsWithGradients(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = zoo_model("mlp")[0]

        def forward(self, x: Tensor) -> Tensor:
            if torch.is_grad_enabled():  # only the DeconvNet pass runs with gradients
                raise RuntimeError("boom")
            return self.net(x)

    model = FailsWithGradients().eval()
    explainer = LayeredInfluence(model, model.net.fc2).fit(torch.randn(40, 6))
    with pytest.raises(RuntimeError, match="boom"):
        explainer.attribute(torch.randn(2, 6))
    assert hooks_left(model) == 0


def test_training_mode_with_batch_norm_warns():
    model = zoo_model("cnn_bn")[0]
    explainer = LayeredInfluence(model, model.conv2).fit(torch.randn(30, 1, 10, 10))
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        explainer.attribute(torch.randn(3, 1, 10, 10))
    assert model.training


def optimiser_step(model: nn.Module) -> None:
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    torch.optim.SGD(model.parameters(), lr=1e-3).step()
    model.fc1.weight.grad = None


@pytest.mark.parametrize(
    "change",
    [
        lambda model: model.conv1.reset_parameters(),
        optimiser_step,
        lambda model: model.load_state_dict(zoo_model("cnn", seed=5)[0].state_dict()),
    ],
    ids=["reset_parameters", "optimiser step", "load_state_dict"],
)
def test_changed_weights_need_a_new_fit(change):
    model, explainer, reference = fitted_cnn("conv2")
    inputs = torch.randn(2, 1, 10, 10)
    explainer.attribute(inputs)  # running the model leaves the fit current
    explainer.influence(inputs)
    change(model)
    for call in (explainer.attribute, explainer.influence):
        with pytest.raises(RuntimeError, match=r"LayeredInfluence\.fit\(\) again"):
            call(inputs)
    explainer.fit(reference, layer="conv2")
    refitted = LayeredInfluence(model, model.conv2).fit(reference)
    torch.testing.assert_close(explainer.influence(inputs), refitted.influence(inputs))


# ---------------------------------------------------------------- errors


def test_attribute_and_influence_before_fit():
    model, layers, _ = zoo_model("mlp")
    explainer = LayeredInfluence(model, [layers["fc1"], layers["fc2"]])
    for call in (explainer.attribute, explainer.influence):
        with pytest.raises(RuntimeError, match="call fit"):
            call(torch.randn(2, 6))
    with pytest.raises(RuntimeError, match="call fit"):
        explainer.chosen_layer  # noqa: B018


def test_single_predicted_class_is_an_error():
    model = SignOfFirstFeature()
    explainer = LayeredInfluence(model, model.layer)
    with pytest.raises(ValueError, match="at least two predicted classes"):
        explainer.fit(torch.rand(10, 2, dtype=torch.float64) + 0.1)  # all x0 > 0
    explainer.fit(two_class_data(20))
    with pytest.raises(ValueError, match="at least two predicted classes"):
        explainer.fit(-torch.rand(10, 2, dtype=torch.float64) - 0.1)
    assert explainer.reference_size == 20  # a failed fit keeps the previous one


def test_layer_not_a_candidate():
    model, layers, _ = zoo_model("mlp")
    explainer = LayeredInfluence(model, [layers["fc1"], layers["fc2"]])
    reference = torch.randn(100, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not one of the candidate layers"):
        explainer.fit(reference, layer=layers["fc3"])
    explainer.fit(reference)
    for call in (explainer.attribute, explainer.influence):
        with pytest.raises(ValueError, match="not one of the candidate layers"):
            call(torch.randn(2, 6), layer=layers["fc3"])
        with pytest.raises(ValueError, match="not one of the candidate layers"):
            call(torch.randn(2, 6), layer="fc9")


def test_layer_not_in_model_and_reused_module():
    model, layers, _ = zoo_model("mlp")
    with pytest.raises(ValueError, match="not part of the model"):
        LayeredInfluence(model, [layers["fc1"], nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="empty"):
        LayeredInfluence(model, [])
    with pytest.raises(ValueError, match="more than once"):
        LayeredInfluence(model, [layers["fc1"], layers["fc1"]])

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(torch.relu(self.fc(x)))

    reused = Reused()
    with pytest.raises(ReusedLayerError):
        LayeredInfluence(reused, reused.fc).fit(torch.randn(10, 3))
    assert hooks_left(reused) == 0


@pytest.mark.parametrize(
    ("fit_kwargs", "match"),
    [
        ({"criterion": "best"}, "criterion"),
        ({"tolerance": -0.1}, "tolerance"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_fit_arguments(fit_kwargs, match):
    model, layers, _ = zoo_model("mlp")
    with pytest.raises(ValueError, match=match):
        LayeredInfluence(model, layers["fc1"]).fit(torch.randn(20, 6), **fit_kwargs)


def test_bad_attribute_arguments_and_inputs():
    model, layers, _ = zoo_model("mlp")
    explainer = LayeredInfluence(model, layers["fc2"]).fit(torch.randn(40, 6))
    inputs = torch.randn(2, 6)
    for kwargs in ({"top_fraction": 0.0}, {"top_k": 0}, {"top_k": 8}, {"top_k": 1.5}):
        with pytest.raises(ValueError, match="top_"):
            explainer.attribute(inputs, **kwargs)
    with pytest.raises(ValueError, match="alpha"):
        explainer.attribute(inputs, alpha=lambda r: r)
    with pytest.raises(ValueError, match="NaN"):
        explainer.attribute(torch.full((2, 6), float("nan")))
    with pytest.raises(TypeError, match="inputs"):
        explainer.influence([1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        explainer.fit([])


def test_reference_batches_of_different_shapes():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 2)
    ).eval()
    explainer = LayeredInfluence(model, [model[0], model[4]])
    loader = [(torch.randn(10, 1, 8, 8), torch.zeros(10)), (torch.randn(10, 1, 10, 10), None)]
    with pytest.raises(ValueError, match=r"reference batch 1 .*\(1, 10, 10\).*batch 0 \(1, 8, 8\)"):
        explainer.fit(loader)
    two_inputs = TwoInputs().eval()
    batches = [
        ((torch.randn(5, 1, 6, 6), torch.randn(5, 4)),),
        ((torch.randn(5, 1, 6, 6), torch.randn(5, 3)),),
    ]
    with pytest.raises(ValueError, match=r"batch 1 .*\(\(1, 6, 6\), \(3,\)\)"):
        LayeredInfluence(two_inputs, two_inputs.fc).fit(batches)


@pytest.mark.parametrize("points_per_chunk", [2.5, 0, True])
def test_bad_points_per_chunk(points_per_chunk):
    explainer = fitted_cnn("conv2")[1]
    for call in (explainer.influence, explainer.attribute):
        with pytest.raises(ValueError, match="points_per_chunk must be a positive integer"):
            call(torch.randn(2, 1, 10, 10), points_per_chunk=points_per_chunk)


def test_points_per_chunk_changes_nothing():
    explainer = fitted_cnn("conv2", double=True)[1]
    inputs = torch.randn(5, 1, 10, 10, dtype=torch.float64)
    torch.testing.assert_close(
        explainer.influence(inputs, points_per_chunk=np.int64(3)), explainer.influence(inputs)
    )


def test_attribute_needs_a_module():
    model, layers, _ = zoo_model("mlp")
    explainer = LayeredInfluence(lambda x: model(x), layers["fc2"]).fit(torch.randn(40, 6))
    assert explainer.influence(torch.randn(2, 6)).shape == (2, 7)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        explainer.attribute(torch.randn(2, 6))
