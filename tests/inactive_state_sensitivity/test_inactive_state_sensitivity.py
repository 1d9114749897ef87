"""InactiveStateSensitivity against a slow plain reference of its definition (eq. 8)."""

from __future__ import annotations

import warnings
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import CaptumSSAWarning, InactiveStateSensitivity
from captum_ssa._utils.linearity import NotPiecewiseLinearWarning
from tests.models import PIECEWISE_LINEAR_MODELS, TwoInputs, build, layer_output

SETTINGS = settings(max_examples=10, deadline=None)


def layer_output_of(model: nn.Module, layer: nn.Module, example: Tensor) -> Tensor:
    """The layer's output for one example, flattened, with its graph."""
    return layer_output(model, layer, example[None])[0].flatten()


def reference_active_counts(model: nn.Module, layer: nn.Module, reference: Tensor) -> Tensor:
    with torch.no_grad():
        return sum((layer_output_of(model, layer, y) > 0).float() for y in reference)


def reference_insens(
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    reference: Tensor,
    weighting: str = "frequency",
    include_active: bool = False,
    units: Optional[list[int]] = None,
) -> Tensor:
    """One example and one neuron at a time: Omega = sum_i weight_i (v_i / |w_i|^2) w_i,
    over the (flat) ``units`` only if given; "uniform" divides by the count of the
    whole layer's neurons in the sum either way."""
    frequency = reference_active_counts(model, layer, reference) / len(reference)
    results = []
    for example in x:
        example = example.clone().requires_grad_()
        activity = layer_output_of(model, layer, example)
        omega = torch.zeros_like(example)
        selected = 0
        for i in range(activity.numel()):
            if activity[i] > 0 and not include_active:
                continue
            selected += 1
            if units is not None and i not in units:
                continue
            (w,) = torch.autograd.grad(activity[i], example, retain_graph=True)
            if w.norm() == 0:
                continue
            weight = frequency[i] if weighting == "frequency" else 1.0
            omega += weight * activity[i].detach() / w.square().sum() * w
        if weighting == "uniform":
            omega /= max(selected, 1)
        results.append(omega)
    return torch.stack(results)


@SETTINGS
@given(
    name=st.sampled_from(PIECEWISE_LINEAR_MODELS),
    seed=st.integers(0, 10_000),
    weighting=st.sampled_from(["frequency", "uniform"]),
    include_active=st.booleans(),
    chunk_size=st.sampled_from([None, 1, 3, 50]),
)
def test_insens_equals_the_plain_reference(name, seed, weighting, include_active, chunk_size):
    # float64: an inactive neuron with a tiny gradient norm divides by |w|^2, which in
    # float32 leaves rounding of ~1e-4 relative (residual, seed 5984) in both computations
    model, layers, shape = build(name, seed)
    model.double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *shape, generator=generator, dtype=torch.float64)
    reference = torch.randn(20, *shape, generator=generator, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, list(layers.values())).fit(reference)
    results = insens.attribute(
        x, weighting=weighting, include_active=include_active, jacobian_vectors_per_chunk=chunk_size
    )
    assert isinstance(results, list) and len(results) == len(layers)
    for layer, result in zip(layers.values(), results):
        expected = reference_insens(model, layer, x, reference, weighting, include_active)
        torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-5)


def test_activation_frequency_counts_active_reference_samples():
    model, layers, shape = build("cnn", 2)
    reference = torch.randn(30, *shape)
    insens = InactiveStateSensitivity(model, layers["conv2"]).fit(reference)
    expected = reference_active_counts(model, layers["conv2"], reference) / 30
    assert insens.reference_size == 30
    assert insens.activation_frequency.shape == (5, 4, 4)
    torch.testing.assert_close(insens.activation_frequency.flatten(), expected)


def test_fit_accepts_a_dataloader_of_pairs_and_equals_fit_on_a_tensor():
    model, layers, shape = build("mlp", 4)
    reference = torch.randn(25, *shape)
    loader = DataLoader(TensorDataset(reference, torch.zeros(25)), batch_size=7)
    from_loader = InactiveStateSensitivity(model, layers["fc2"]).fit(loader)
    from_tensor = InactiveStateSensitivity(model, layers["fc2"]).fit(reference)
    torch.testing.assert_close(from_loader.activation_frequency, from_tensor.activation_frequency)
    assert from_loader.reference_size == 25


def hand_network() -> nn.Sequential:
    """x (2) -> Linear(2, 2) -> ReLU -> Linear(2, 1)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, -4.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        net[2].bias.zero_()
    return net.eval()


def test_known_answer_on_a_hand_computed_network():
    # Reference: (1, 1) turns unit 0 on only, (3, 3) both: m = (2, 1), N = 2.
    # At x = (1, 2): v = (1, -1); unit 1 is off with w = (1, 1), |w|^2 = 2, so
    # omega_1 = (-1 / 2) (1, 1) and Omega = (1 / 2) omega_1 = (-0.25, -0.25).
    net = hand_network()
    insens = InactiveStateSensitivity(net, net[0]).fit(torch.tensor([[1.0, 1.0], [3.0, 3.0]]))
    torch.testing.assert_close(insens.activation_frequency, torch.tensor([1.0, 0.5]))
    omega = insens.attribute(torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(omega, torch.tensor([[-0.25, -0.25]]))
    # Uniform: the mean over the one inactive neuron, omega_1 itself.
    uniform = insens.attribute(torch.tensor([[1.0, 2.0]]), weighting="uniform")
    torch.testing.assert_close(uniform, torch.tensor([[-0.5, -0.5]]))
    # All neurons: unit 0 adds (1 / 1) (1, 0) with weight 1.
    everything = insens.attribute(torch.tensor([[1.0, 2.0]]), include_active=True)
    torch.testing.assert_close(everything, torch.tensor([[0.75, -0.25]]))


def test_pooled_layers_sum_frequency_results_and_average_uniform_over_the_union():
    model, layers, shape = build("cnn", 5)
    x, reference = torch.randn(2, *shape), torch.randn(15, *shape)
    chosen = [layers["conv2"], layers["fc1"]]
    insens = InactiveStateSensitivity(model, chosen).fit(reference)
    separate = insens.attribute(x)
    pooled = insens.attribute(x, pool_layers=True)
    torch.testing.assert_close(pooled, separate[0] + separate[1])

    uniform_separate = insens.attribute(x, weighting="uniform")
    uniform_pooled = insens.attribute(x, weighting="uniform", pool_layers=True)
    with torch.no_grad():
        counts = [
            (layer_output_of(model, layer, example) <= 0).sum()
            for layer in chosen
            for example in x[:1]
        ]
    expected_first = (counts[0] * uniform_separate[0][0] + counts[1] * uniform_separate[1][0]) / (
        counts[0] + counts[1]
    )
    torch.testing.assert_close(uniform_pooled[0], expected_first)


def test_frequency_weighting_before_fit_says_to_call_fit():
    model, layers, shape = build("mlp", 0)
    insens = InactiveStateSensitivity(model, layers["fc1"])
    with pytest.raises(RuntimeError, match=r"fit\(reference\)"):
        insens.attribute(torch.randn(2, *shape))
    assert insens.attribute(torch.randn(2, *shape), weighting="uniform").shape == (2, *shape)


def test_empty_reference_is_a_clear_error():
    model, layers, shape = build("mlp", 0)
    insens = InactiveStateSensitivity(model, layers["fc1"])
    with pytest.raises(ValueError, match=r"no examples|empty"):
        insens.fit(torch.empty(0, *shape))
    with pytest.raises(ValueError, match="empty"):
        insens.fit([])


def test_unknown_weighting_and_bad_chunk_size_are_errors():
    model, layers, shape = build("mlp", 0)
    insens = InactiveStateSensitivity(model, layers["fc1"]).fit(torch.randn(5, *shape))
    with pytest.raises(ValueError, match="weighting"):
        insens.attribute(torch.randn(2, *shape), weighting="median")
    with pytest.raises(ValueError, match="jacobian_vectors_per_chunk"):
        insens.attribute(torch.randn(2, *shape), jacobian_vectors_per_chunk=0)


def test_inputs_of_another_size_than_fit_are_a_clear_error():
    # Global pooling lets the model itself accept any image size.
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1)
    ).eval()
    insens = InactiveStateSensitivity(model, model[0]).fit(torch.randn(4, 1, 6, 6))
    with pytest.raises(ValueError, match="fit"):
        insens.attribute(torch.randn(2, 1, 5, 5))


def test_tuple_inputs_give_a_tuple_equal_to_the_reference_on_the_joint_input():
    model = TwoInputs().eval()
    image, vector = torch.randn(2, 1, 6, 6), torch.randn(2, 4)
    insens = InactiveStateSensitivity(model, model.fc).fit(
        (torch.randn(10, 1, 6, 6), torch.randn(10, 4))
    )
    omega = insens.attribute((image, vector), weighting="uniform")
    assert (
        isinstance(omega, tuple)
        and omega[0].shape == image.shape
        and omega[1].shape == vector.shape
    )

    # The same network written on one flat input: the reference applies to it.
    class Joined(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, flat: Tensor) -> Tensor:
            return self.inner(flat[:, :36].reshape(-1, 1, 6, 6), flat[:, 36:])

    joined = Joined().eval()
    flat = torch.cat([image.flatten(1), vector], 1)
    expected = reference_insens(joined, model.fc, flat, flat, weighting="uniform")
    torch.testing.assert_close(torch.cat([omega[0].flatten(1), omega[1]], 1), expected)


def test_batch_results_equal_per_example_results():
    model, layers, shape = build("cnn_bn", 3)
    x = torch.randn(4, *shape)
    insens = InactiveStateSensitivity(model, layers["conv2"]).fit(torch.randn(10, *shape))
    batch = insens.attribute(x)
    for i in range(4):
        torch.testing.assert_close(insens.attribute(x[i : i + 1]), batch[i : i + 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_model_device():
    model, layers, shape = build("cnn", 0)
    model = model.cuda()
    reference = torch.randn(10, *shape, device="cuda")
    insens = InactiveStateSensitivity(model, [layers["conv1"], layers["fc1"]]).fit(reference)
    results = insens.attribute(torch.randn(2, *shape, device="cuda"))
    assert all(r.device.type == "cuda" for r in results)


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_every_jacobian_mode_equals_the_plain_reference(mode):
    model, layers, shape = build("cnn", 4)
    x = torch.randn(2, *shape)
    reference = torch.randn(12, *shape)
    insens = InactiveStateSensitivity(model, layers["fc1"]).fit(reference)
    expected = reference_insens(model, layers["fc1"], x, reference)
    torch.testing.assert_close(
        insens.attribute(x, jacobian_mode=mode, jacobian_vectors_per_chunk=7),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )


class Recurrent(nn.Module):
    """LSTM -> fc (wider than the input, so "auto" first picks forward mode) -> ReLU -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 5, batch_first=True)
        self.fc = nn.Linear(5, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(x)
        return self.out(torch.relu(self.fc(hidden[:, -1])))


# vmap over the LSTM backward has no batching rule: torch warns it is slower
@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_lstm_without_forward_mode_falls_back_to_reverse_mode_or_says_so():
    torch.manual_seed(0)
    model = Recurrent().eval()
    x, reference = torch.randn(2, 3, 2), torch.randn(10, 3, 2)
    insens = InactiveStateSensitivity(model, model.fc).fit(reference)
    with pytest.warns(UserWarning, match="piecewise"):  # LSTM gates are not ReLUs
        omega = insens.attribute(x)
    torch.testing.assert_close(omega, reference_insens(model, model.fc, x, reference))
    with pytest.raises(NotImplementedError, match="jacobian_mode='reverse'"):
        insens.attribute(x, jacobian_mode="forward")


def test_nonlinear_network_warns_once_per_instance_over_layers_and_calls():
    net = nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)
    ).eval()
    x = torch.randn(2, 3)
    insens = InactiveStateSensitivity(net, [net[2], net[4]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        insens.attribute(x, weighting="uniform")
        insens.attribute(x, weighting="uniform")
    assert [(w.category, str(w.message)[:40]) for w in caught] == [
        (NotPiecewiseLinearWarning, "InactiveStateSensitivity: the network is")
    ]
    with pytest.warns(CaptumSSAWarning, match="not piecewise linear.*Tanh"):
        InactiveStateSensitivity(net, net[2]).attribute(x, weighting="uniform")


def test_unknown_jacobian_mode_is_an_error():
    model, layers, shape = build("mlp", 0)
    insens = InactiveStateSensitivity(model, layers["fc1"])
    with pytest.raises(ValueError, match="jacobian_mode"):
        insens.attribute(torch.randn(2, *shape), weighting="uniform", jacobian_mode="both")


def test_training_mode_attribute_is_a_clear_error_and_fit_keeps_bn_statistics():
    model, layers, shape = build("cnn_bn", 5)
    model.train()
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    insens = InactiveStateSensitivity(model, layers["conv2"])
    with pytest.warns(UserWarning, match="training mode"):
        insens.fit(torch.randn(8, *shape))
    with pytest.raises(ValueError, match="eval mode"):
        insens.attribute(torch.randn(2, *shape))
    assert model.training
    for key, value in statistics.items():
        assert torch.equal(model.state_dict()[key], value), key
    model.eval()
    insens.attribute(torch.randn(2, *shape))  # the fit is still current


@pytest.mark.parametrize(
    "change",
    ["reset_parameters", "optimiser_step", "load_state_dict"],
)
def test_changed_weights_after_fit_say_to_refit(change):
    model, layers, shape = build("mlp", 1)
    x = torch.randn(3, *shape)
    insens = InactiveStateSensitivity(model, layers["fc2"]).fit(torch.randn(10, *shape))
    if change == "reset_parameters":
        layers["fc1"].reset_parameters()
    elif change == "optimiser_step":
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        model(x).sum().backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    else:
        other, _, _ = build("mlp", 2)
        model.load_state_dict(other.state_dict())
    with pytest.raises(RuntimeError, match=r"fit\(\) again"):
        insens.attribute(x)
    with pytest.raises(RuntimeError, match=r"fit\(\) again"):
        _ = insens.activation_frequency
    insens.attribute(x, weighting="uniform")  # needs no fit
    insens.fit(torch.randn(10, *shape))
    assert insens.attribute(x).shape == x.shape


def test_reference_batches_of_different_sizes_are_a_clear_error():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1)
    ).eval()
    insens = InactiveStateSensitivity(model, model[0])
    batches = [torch.randn(4, 1, 8, 8), torch.randn(4, 1, 10, 10)]
    with pytest.raises(ValueError, match=r"reference batch 1 .* one shape"):
        insens.fit(batches)


def test_target_is_accepted_and_cannot_move_insens():
    model, layers, shape = build("cnn", 6)
    x = torch.randn(3, *shape)
    insens = InactiveStateSensitivity(model, layers["conv2"]).fit(torch.randn(10, *shape))
    expected = insens.attribute(x)
    for target in (0, torch.tensor([2, 0, 1]), [1, 1, 0]):
        torch.testing.assert_close(insens.attribute(x, target), expected)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_small_memory_budget_shrinks_the_jacobian_chunks_not_the_result(mode, monkeypatch):
    from captum_ssa import memory_budget
    from captum_ssa._utils import jacobian

    model, layers, shape = build("cnn", 4)
    x = torch.randn(3, *shape)
    reference = torch.randn(12, *shape)
    insens = InactiveStateSensitivity(model, layers["conv2"]).fit(reference)
    chunk_sizes: list[int] = []
    default_chunk_size = jacobian.default_chunk_size

    def recording_chunk_size(*args, **kwargs):
        chunk_sizes.append(default_chunk_size(*args, **kwargs))
        return chunk_sizes[-1]

    monkeypatch.setattr(jacobian, "default_chunk_size", recording_chunk_size)
    roomy = insens.attribute(x, jacobian_mode=mode)
    with memory_budget(4096):
        tight = insens.attribute(x, jacobian_mode=mode)
    assert len(chunk_sizes) == 2 and chunk_sizes[1] < chunk_sizes[0]
    torch.testing.assert_close(tight, roomy, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        tight, reference_insens(model, layers["conv2"], x, reference), rtol=1e-4, atol=1e-5
    )
