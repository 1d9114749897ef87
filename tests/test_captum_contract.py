"""The drop-in contract every method of the package keeps, one test per clause,
parametrised over the four classes.

Each method is wrapped in a small adapter that builds the explainer on a model
(fitting it where the method needs reference data) and explains a batch with
Captum's ``attribute(inputs, target=...)``. StepwiseSensitivity returns a graph,
so the clauses about input-shaped results (tuples, per-example equality,
NoiseTunnel, ``sensitivity_max``) apply to the other three.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, visualization
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor, nn

from captum_ssa import (
    DependencyGraph,
    InactiveStateSensitivity,
    LayeredInfluence,
    ReusedLayerError,
    StepwiseSensitivity,
    SwitchedLinearProjection,
)
from tests.behaviour import assert_same_snapshot, hooks_left, snapshot
from tests.models import TwoInputs, build

matplotlib.use("Agg")

Layers = list[nn.Module]


@dataclass
class Method:
    """How to build and call one method of the package on any model.

    ``layers(model)`` picks the layers (lowest first, the last one the output
    layer), ``build`` makes the explainer with reference data shaped like the
    inputs, ``explain`` calls ``attribute``.
    """

    name: str
    build: Callable[[nn.Module, Layers, Any], Any]
    input_shaped: bool = True
    fitted: bool = False

    def explain(self, explainer: Any, inputs: Any, target: Any = None) -> Any:
        return explainer.attribute(inputs, target=target)


def _reference_like(inputs: Any, size: int = 24) -> Any:
    """Reference data for the fits; wide enough that the random models below
    predict at least two classes on it (LayeredInfluence needs them)."""
    generator = torch.Generator().manual_seed(7)

    def like(t: Tensor) -> Tensor:
        return 3 * torch.randn(size, *t.shape[1:], generator=generator).to(t)

    return tuple(like(t) for t in inputs) if isinstance(inputs, tuple) else like(inputs)


METHODS = [
    Method(
        "SwitchedLinearProjection",
        lambda model, layers, x: SwitchedLinearProjection(model, layers[-1]),
    ),
    Method(
        "InactiveStateSensitivity",
        lambda model, layers, x: InactiveStateSensitivity(model, layers[-2]).fit(
            _reference_like(x)
        ),
        fitted=True,
    ),
    Method(
        "StepwiseSensitivity",
        lambda model, layers, x: StepwiseSensitivity(model, layers),
        input_shaped=False,
    ),
    Method(
        "LayeredInfluence",
        lambda model, layers, x: LayeredInfluence(model, layers[:-1]).fit(
            _reference_like(x), layer=layers[-2]
        ),
        fitted=True,
    ),
]
INPUT_SHAPED = [m for m in METHODS if m.input_shaped]
FITTED = [m for m in METHODS if m.fitted]


def ids(methods: list[Method]) -> list[str]:
    return [m.name for m in methods]


def cnn() -> tuple[nn.Module, Layers, Tensor, Tensor]:
    """conv-BN-ReLU(inplace)-pool-conv-ReLU-pool-fc-ReLU-fc, eval mode, a batch and targets."""
    model, named, shape = build("cnn_bn", 5)
    generator = torch.Generator().manual_seed(3)
    x = 3 * torch.randn(4, *shape, generator=generator)
    return model, list(named.values()), x, torch.tensor([0, 2, 1, 2])


def same(a: Any, b: Any, **tolerance: Any) -> None:
    """Attributions (tensors or tuples) close, graphs equal."""
    if isinstance(a, DependencyGraph):
        assert a == b
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, **tolerance)
    else:
        torch.testing.assert_close(a, b, **tolerance)


# ------------------------------------------------------------------- no trace


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_no_trace_on_the_model_or_the_inputs(method, training):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    # a state worth keeping: a gradient, a frozen parameter, a train-mode model
    layers[0].weight.grad = torch.randn_like(layers[0].weight)
    layers[1].bias.requires_grad_(False)
    model.train(training)
    x.requires_grad_(False)
    x_before = x.clone()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training-mode warning
        try:
            method.explain(explainer, x, y)
        except ValueError as error:
            # batch-dependent layers may be refused in training mode, never silently used
            assert training and "eval" in str(error)
    assert_same_snapshot(before, snapshot(model))
    assert not x.requires_grad and torch.equal(x, x_before)


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_no_trace_when_the_call_fails(method):
    model, layers, x, _ = cnn()
    explainer = method.build(model, layers, x)
    before = snapshot(model)
    with pytest.raises((RuntimeError, ValueError)):
        method.explain(explainer, x[:, :, :5])  # too small for the first fc layer
    assert_same_snapshot(before, snapshot(model))


# ------------------------------------------------------- the model's structure


class InPlaceMLP(nn.Module):
    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(8, 6)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.fc3 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_inplace_relu_after_a_layer_gives_the_same_result(method):
    torch.manual_seed(0)
    plain, inplace = InPlaceMLP(False).eval(), InPlaceMLP(True).eval()
    inplace.load_state_dict(plain.state_dict())
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])

    def run(model: InPlaceMLP) -> Any:
        layers = [model.fc1, model.fc2, model.fc3]
        return method.explain(method.build(model, layers, x), x, y)

    same(run(inplace), run(plain))


class ReusedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_a_reused_module_is_a_clear_error(method):
    model = ReusedNet().eval()
    x = torch.randn(3, 4)
    # every method observes model.fc (SSA lists each layer once)
    layers = [model.fc, model.fc] if method.input_shaped else [model.fc, model.out]
    with pytest.raises(ReusedLayerError, match="more than once"):
        method.explain(method.build(model, layers, x), x, 0)
    assert hooks_left(model) == 0


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_a_layer_outside_the_model_is_a_clear_error(method):
    model, _, x, _ = cnn()
    with pytest.raises(ValueError, match="not part of the model"):
        method.build(model, [nn.Linear(6, 3), nn.Linear(6, 3)], x)


CLASSES = {
    "SwitchedLinearProjection": SwitchedLinearProjection,
    "InactiveStateSensitivity": InactiveStateSensitivity,
    "StepwiseSensitivity": StepwiseSensitivity,
    "LayeredInfluence": LayeredInfluence,
}


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_device_ids_as_captum_takes_it(method):
    # Captum's layer and neuron methods take device_ids (for DataParallel models)
    cls = CLASSES[method.name]
    assert "device_ids" in inspect.signature(cls.__init__).parameters
    model, layers, _, _ = cnn()
    layer_argument = layers if cls is StepwiseSensitivity else layers[-2]
    assert cls(model, layer_argument, device_ids=[0, 1]).device_ids == [0, 1]
    assert cls(model, layer_argument).device_ids is None
    with pytest.raises(TypeError, match="device_ids"):
        cls(model, layer_argument, device_ids="cuda")


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_no_convergence_delta_means_compute_convergence_delta_raises(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    if explainer.has_convergence_delta():
        delta = explainer.compute_convergence_delta(explainer.attribute(x, y), 0.0, x, y)
        assert delta.shape == (len(x),)
    else:
        with pytest.raises(NotImplementedError, match="no convergence delta"):
            explainer.compute_convergence_delta(x, 0.0, x, y)


class Skips(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 3)
        self.used = nn.Linear(3, 2)
        self.unused = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(torch.relu(self.first(x)))


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_a_layer_that_never_runs_is_a_clear_error(method):
    model = Skips().eval()
    layers = [model.unused, model.unused] if method.input_shaped else [model.first, model.unused]
    with pytest.raises(ValueError, match="did not run"):
        method.explain(method.build(model, layers, torch.randn(2, 4)), torch.randn(2, 4), 0)
    assert hooks_left(model) == 0


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_training_mode_warns_or_refuses_and_stays_in_training(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            method.explain(explainer, x, y)
            refused = False
        except ValueError as error:
            assert "eval mode" in str(error)
            refused = True
    assert refused or any("training mode" in str(w.message) for w in caught)
    assert all(m.training for m in model.modules())


# ------------------------------------------------------------ inputs and outputs


# TwoInputs uses F.relu, which DeconvNet (LayeredInfluence) warns about
@pytest.mark.filterwarnings("ignore:between the inputs")
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_a_tuple_in_gives_a_tuple_out(method):
    torch.manual_seed(1)
    model = TwoInputs().eval()
    inputs = (torch.randn(5, 1, 6, 6), torch.randn(5, 4))
    explainer = method.build(model, [model.conv, model.fc, model.out], inputs)
    result = method.explain(explainer, inputs, torch.tensor([0, 1, 1, 0, 1]))
    if not method.input_shaped:
        assert isinstance(result, DependencyGraph)
        return
    assert isinstance(result, tuple) and len(result) == 2
    assert all(r.shape == i.shape for r, i in zip(result, inputs))


@pytest.mark.parametrize("method", INPUT_SHAPED, ids=ids(INPUT_SHAPED))
def test_a_batch_gives_what_each_example_gives_alone(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    batch = method.explain(explainer, x, y)
    for i in range(len(x)):
        alone = method.explain(explainer, x[i : i + 1], y[i : i + 1])
        same(alone, batch[i : i + 1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["float64", "float16"])
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_float64_and_float16_models_agree_with_float32(method, dtype):
    model, layers, x, y = cnn()
    expected = method.explain(method.build(model, layers, x), x, y)
    model.to(dtype)
    x = x.to(dtype)
    result = method.explain(method.build(model, layers, x), x, y)
    if not method.input_shaped:
        assert isinstance(result, DependencyGraph)
        assert all(torch.isfinite(result.relevance(layer)).all() for layer in layers)
        if dtype == torch.float64:
            for layer in layers:
                torch.testing.assert_close(
                    result.relevance(layer).float(), expected.relevance(layer).float()
                )
        return
    assert result.dtype == dtype
    scale = expected.abs().max()
    # float16 keeps ~3 decimal digits through a few layers; float64 is exact
    tolerance = 2e-2 if dtype == torch.float16 else 1e-5
    assert (result.float() - expected).abs().max() <= tolerance * scale


# ------------------------------------------------------------ Captum's tools


def test_switched_weights_have_near_zero_infidelity_for_the_neuron():
    model, layers, x, y = cnn()
    weights = SwitchedLinearProjection(model, layers[-1]).attribute(x, target=y)

    def logit(inputs: Tensor, target: Tensor) -> Tensor:
        return model(inputs).gather(1, target[:, None])[:, 0]

    def tiny_perturbation(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = 1e-4 * torch.randn_like(inputs)
        return noise, inputs - noise

    exact = infidelity(logit, tiny_perturbation, x, weights, additional_forward_args=y)
    shuffled = infidelity(logit, tiny_perturbation, x, weights.flip(0), additional_forward_args=y)
    assert exact.shape == (len(x),)
    assert exact.max() < 1e-10
    assert shuffled.mean() > 100 * exact.mean() + 1e-12


@pytest.mark.parametrize("method", INPUT_SHAPED, ids=ids(INPUT_SHAPED))
def test_visualize_image_attr_draws_the_attribution(method):
    model, layers, x, y = cnn()
    attribution = method.explain(method.build(model, layers, x), x, y)
    figure, axis = visualization.visualize_image_attr(
        attribution[0].permute(1, 2, 0).numpy(),
        x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map",
        sign="all",
        use_pyplot=False,
    )
    image = axis.get_images()[-1].get_array()
    assert np.asarray(image).shape[:2] == x.shape[2:]
    matplotlib.pyplot.close(figure)


@pytest.mark.parametrize("method", INPUT_SHAPED, ids=ids(INPUT_SHAPED))
def test_noise_tunnel_with_per_example_targets_equals_a_loop(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    # no noise: NoiseTunnel's repeated, expanded call must give the plain result
    smoothed = NoiseTunnel(explainer).attribute(x, nt_samples=3, stdevs=0.0, target=y)
    same(smoothed, method.explain(explainer, x, y), rtol=1e-4, atol=1e-6)
    noisy = NoiseTunnel(explainer).attribute(x, nt_samples=3, stdevs=0.1, target=y)
    assert noisy.shape == x.shape and torch.isfinite(noisy).all()


@pytest.mark.parametrize("method", INPUT_SHAPED, ids=ids(INPUT_SHAPED))
def test_sensitivity_max_with_per_example_targets(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    sensitivity = sensitivity_max(explainer.attribute, x, target=y, n_perturb_samples=3)
    assert sensitivity.shape == (len(x),)
    assert torch.isfinite(sensitivity).all() and (sensitivity >= 0).all()


# ------------------------------------------------------------------ stale fits


@pytest.mark.parametrize("method", FITTED, ids=ids(FITTED))
def test_a_fit_notices_changed_weights(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    layers[0].reset_parameters()
    with pytest.raises(RuntimeError, match=r"fit\(\) again"):
        method.explain(explainer, x, y)


# ----------------------------------------------------------------- bad inputs


def _with_inf(x: Tensor) -> Tensor:
    return x.index_put((torch.tensor([0]),), torch.tensor(float("inf")))


def _with_nan(x: Tensor) -> Tensor:
    return x.index_put((torch.tensor([1]),), torch.tensor(float("nan")))


BAD_INPUTS = {
    "inf": (_with_inf, ValueError, "Inf"),
    "nan": (_with_nan, ValueError, "NaN"),
    "empty": (lambda x: x[:0], ValueError, "batch size 0"),
    # SSA reads token ids as they are (tests/stepwise_sensitivity/test_token_inputs.py);
    # the input-shaped methods differentiate with respect to the inputs
    "integer": (lambda x: x.round().long(), TypeError, "floating-point.*embedding_layer="),
    # a list of tensors is a stream of batches for the dataset methods (SSA), but plain
    # Python numbers are an input to no method
    "python list": (lambda x: x.tolist(), TypeError, "must be a tensor"),
    "batch sizes": (lambda x: (x, x[:2]), ValueError, "same batch size"),
}


# integer inputs are token ids to SSA, and no error
BAD_CASES = [
    pytest.param(method, bad, id=f"{method.name}-{bad}")
    for method in METHODS
    for bad in BAD_INPUTS
    if method.input_shaped or bad != "integer"
]


@pytest.mark.parametrize(("method", "bad"), BAD_CASES)
def test_bad_inputs_are_clear_errors(method, bad):
    model, layers, x, _ = cnn()
    explainer = method.build(model, layers, x)
    make, error, message = BAD_INPUTS[bad]
    with pytest.raises(error, match=message):
        method.explain(explainer, make(x.clone()), None)
    assert hooks_left(model) == 0


# -------------------------------------------------------------------- threads


@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_concurrent_calls_on_one_model_give_the_sequential_results(method):
    model, layers, x, y = cnn()
    explainer = method.build(model, layers, x)
    expected = method.explain(explainer, x, y)
    results: list[Any] = [None] * 4
    errors: list[BaseException] = []

    def work(position: int) -> None:
        try:
            results[position] = method.explain(explainer, x, y)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for result in results:
        same(result, expected)
    assert hooks_left(model) == 0


# ----------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS, ids=ids(METHODS))
def test_cuda_gives_the_cpu_result_without_warnings(method):
    model, layers, x, y = cnn()
    expected = method.explain(method.build(model, layers, x), x, y)
    model.cuda()
    x, y = x.cuda(), y.cuda()
    with warnings.catch_warnings():
        # e.g. cuDNN's batch norm must not read as "not piecewise linear"
        warnings.simplefilter("error")
        result = method.explain(method.build(model, layers, x), x, y)
    if isinstance(result, DependencyGraph):
        # the same neurons; relevances to float tolerance (other kernels)
        for layer in layers:
            assert torch.equal(result.neurons(layer), expected.neurons(layer))
            torch.testing.assert_close(result.relevance(layer).cpu(), expected.relevance(layer))
    else:
        assert result.device.type == "cuda"
        torch.testing.assert_close(result.cpu(), expected, rtol=1e-3, atol=1e-5)
