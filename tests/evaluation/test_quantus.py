"""quantus_explain: input-shaped results equal to the methods' own, fits cached by the
weights, and Quantus's MPRT, RandomLogit and FaithfulnessCorrelation with no glue."""

from __future__ import annotations

import copy
import importlib
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from captum_ssa import (
    CaptumSSAWarning,
    InactiveStateSensitivity,
    LayeredInfluence,
    SwitchedLinearProjection,
)
from captum_ssa.evaluation import compare, quantus_adapter, quantus_explain, run_quantus_metric
from tests.models import build


@pytest.fixture
def setup():
    # seed 3 and inputs of scale 5: the untrained model and its randomised copies
    # (Quantus's MPRT seeds) predict at least two classes, as LayeredInfluence's fit needs
    model, _, shape = build("cnn", 3)
    x = 5 * np.random.RandomState(0).randn(4, *shape).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    reference = 5 * np.random.RandomState(1).randn(40, *shape).astype(np.float32)
    return model, x, y, reference


def test_each_method_equals_calling_it_directly(setup):
    model, x, y, reference = setup
    inputs, targets, ref = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(reference)
    direct = {
        "SwitchedLinearProjection": SwitchedLinearProjection(model, model.fc2).attribute(
            inputs, target=targets
        ),
        "InactiveStateSensitivity": InactiveStateSensitivity(model, model.conv2)
        .fit(ref)
        .attribute(inputs),
        "LayeredInfluence": LayeredInfluence(model, [model.conv1, model.conv2, model.fc1])
        .fit(ref)
        .attribute(inputs, target=targets),
    }
    layers = {"InactiveStateSensitivity": "conv2"}
    for method, expected in direct.items():
        result = quantus_explain(
            model=model,
            inputs=x,
            targets=y,
            method=method,
            layer=layers.get(method),
            fit_inputs=reference,
            device="cpu",
        )
        assert isinstance(result, np.ndarray) and result.shape == x.shape
        np.testing.assert_allclose(result, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    saliency = quantus_explain(model, torch.from_numpy(x), y, method="Saliency")
    assert saliency.shape == x.shape and (saliency >= 0).all()


def test_fits_are_reused_until_the_weights_change(setup, monkeypatch):
    model, x, y, reference = setup
    fits = []
    original_fit = InactiveStateSensitivity.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(self)
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(InactiveStateSensitivity, "fit", counting_fit)
    kwargs = {"method": "InactiveStateSensitivity", "layer": "conv2", "fit_inputs": reference}
    first = quantus_explain(model, x, y, **kwargs)
    second = quantus_explain(model, x, y, **kwargs)
    assert len(fits) == 1
    # equal up to rounding: jacobian_mode="auto" times its strategies per explainer
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)
    torch.manual_seed(5)
    model.conv1.reset_parameters()  # in place, as Quantus's MPRT does
    changed = quantus_explain(model, x, y, **kwargs)
    assert len(fits) == 2
    expected = InactiveStateSensitivity(model, model.conv2).fit(torch.from_numpy(reference))
    np.testing.assert_allclose(changed, expected.attribute(torch.from_numpy(x)).numpy(), atol=1e-6)
    quantus_explain(model, x, y, **{**kwargs, "layer": "conv1"})  # another layer, another fit
    assert len(fits) == 4  # (the line above fitted `expected` too)


def test_stepwise_sensitivity_is_refused_with_a_reason(setup):
    model, x, y, _ = setup
    with pytest.raises(ValueError, match="dependency graph"):
        quantus_explain(model, x, y, method="StepwiseSensitivity")
    with pytest.raises(ValueError, match="fit_inputs"):
        quantus_explain(model, x, y, method="InactiveStateSensitivity", layer="conv2")
    with pytest.raises(ValueError, match="no layer named"):
        quantus_explain(model, x, y, method="InactiveStateSensitivity", layer="conv9")


def test_a_missing_quantus_names_the_extra(monkeypatch):
    real_import = importlib.import_module

    def no_quantus(name, *args):
        if name == "quantus":
            raise ImportError("No module named 'quantus'")
        return real_import(name, *args)

    monkeypatch.setattr(quantus_adapter.importlib, "import_module", no_quantus)
    with pytest.raises(ImportError, match=r"captum-ssa\[quantus\]"):
        quantus_adapter.require_quantus()


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("InactiveStateSensitivity", {"layer": "conv2"}),
        ("SwitchedLinearProjection", {}),
        ("LayeredInfluence", {}),
    ],
)
def test_quantus_metrics_run_with_quantus_explain_and_no_glue(setup, method, extra):
    quantus = pytest.importorskip("quantus")
    model, x, y, reference = setup
    kwargs = {"method": method, "fit_inputs": reference, **extra}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    common = {"disable_warnings": True, "display_progressbar": False}
    mprt = quantus.MPRT(**common)(
        model=model, x_batch=x, y_batch=y, explain_func=quantus_explain, explain_func_kwargs=kwargs
    )
    assert list(mprt) == ["original", "fc2", "fc1", "conv2", "conv1"]
    assert all(len(scores) == len(x) for scores in mprt.values())
    np.testing.assert_allclose(mprt["original"], 1.0)
    if method == "InactiveStateSensitivity":
        # Ω of conv2 depends on the layers below it only, and on no class
        np.testing.assert_allclose(mprt["fc1"], 1.0)
        assert np.mean(mprt["conv1"]) < 0.9
    else:
        assert np.mean(mprt["conv1"]) < 0.9
    logit = quantus.RandomLogit(num_classes=3, **common)(
        model=model, x_batch=x, y_batch=y, explain_func=quantus_explain, explain_func_kwargs=kwargs
    )
    assert len(logit) == len(x)
    if method == "InactiveStateSensitivity":
        np.testing.assert_allclose(logit, 1.0)  # target is ignored: no change
    faithfulness = quantus.FaithfulnessCorrelation(nr_runs=4, subset_size=10, **common)
    scores = run_quantus_metric(faithfulness, model, x, y, kwargs)
    assert np.isfinite(scores).all()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_compare_runs_quantus_metrics_on_any_explainer(setup):
    pytest.importorskip("quantus")
    from captum.attr import Saliency

    model, x, y, _ = setup
    table = compare(
        model,
        {"Saliency": Saliency(model), "SLP": SwitchedLinearProjection(model, model.fc2)},
        torch.from_numpy(x),
        torch.from_numpy(y),
        metrics=["quantus:MPRT", "quantus:FaithfulnessCorrelation"],
        metric_kwargs={"quantus:FaithfulnessCorrelation": {"nr_runs": 3, "subset_size": 10}},
    )
    assert table.values["Saliency"]["quantus:MPRT"].shape == (4,)
    # Saliency is |SLP|: the same maps, the same fully randomised correlations
    np.testing.assert_allclose(
        table.values["Saliency"]["quantus:MPRT"], table.values["SLP"]["quantus:MPRT"], atol=1e-6
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_device_argument_is_honoured_on_cuda(setup):
    model, x, y, reference = setup
    kwargs = {"method": "InactiveStateSensitivity", "layer": "conv2", "fit_inputs": reference}
    on_cpu = quantus_explain(model, x, y, **kwargs)
    on_cuda = quantus_explain(model.cuda(), x, y, device="cuda", **kwargs)
    assert isinstance(on_cuda, np.ndarray)
    np.testing.assert_allclose(on_cuda, on_cpu, rtol=1e-4, atol=1e-5)


def _quantus_mprt_reference(model, make_method, x, y, reference):
    """Quantus's MPRT by hand: reset every module with ``reset_parameters`` from the top
    down on one copy (seed 43 before each, as Quantus's seed 42 + 1), fit a fresh method
    on the fully randomised copy, and correlate |attribution| ranks with the trained ones."""
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    trained = make_method(model).fit(reference).attribute(inputs, target=targets)
    randomised = copy.deepcopy(model)
    for module in reversed(list(randomised.modules())):
        if hasattr(module, "reset_parameters"):
            torch.manual_seed(43)
            module.reset_parameters()
    after = make_method(randomised).fit(reference).attribute(inputs, target=targets)
    return np.array(
        [spearmanr(a.abs().flatten(), b.abs().flatten())[0] for a, b in zip(trained, after)]
    )


def test_compare_refits_fitted_methods_on_quantus_randomised_copies(setup):
    pytest.importorskip("quantus")
    model, x, y, reference = setup
    ref = torch.from_numpy(reference)

    def insens(m):
        return InactiveStateSensitivity(m, m.conv2)

    def layered(m):
        return LayeredInfluence(m, [m.conv1, m.conv2, m.fc1])

    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptumSSAWarning)  # no cell fails, no fit fails
        table = compare(
            model,
            {"Insens": insens(model).fit(ref), "LI": layered(model).fit(ref)},
            torch.from_numpy(x),
            torch.from_numpy(y),
            metrics=["quantus:MPRT", "quantus:EfficientMPRT"],
            fit_inputs=ref,
        )
    assert table.errors == {}
    for name, make_method in (("Insens", insens), ("LI", layered)):
        expected = _quantus_mprt_reference(model, make_method, x, y, ref)
        np.testing.assert_allclose(table.values[name]["quantus:MPRT"], expected, atol=1e-6)
        assert np.isfinite(table.values[name]["quantus:EfficientMPRT"]).all()


class _BiasDominated(torch.nn.Module):
    """Trained, it separates tiny inputs into three classes (large first-layer
    weights, no biases); re-initialised, its biases dominate and it predicts one
    class everywhere, so LayeredInfluence cannot be fitted on it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(4, 6)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.fc1.weight.mul_(1e4)
            self.fc1.bias.zero_()
            self.fc2.bias.zero_()

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def test_an_unfittable_randomised_model_gives_nan_with_a_warning_on_every_path():
    pytest.importorskip("quantus")
    model = _BiasDominated().eval()
    generator = torch.Generator().manual_seed(0)
    x, reference = 1e-4 * torch.randn(6, 4, generator=generator), 1e-4 * torch.randn(30, 4)
    y = model(x).argmax(1)
    assert len(model(reference).argmax(1).unique()) > 1  # the trained model can be fitted
    kwargs = {"method": "LayeredInfluence", "fit_inputs": reference.numpy()}
    with pytest.warns(CaptumSSAWarning, match="one class"):
        mprt = run_quantus_metric("MPRT", model, x, y, kwargs)
    np.testing.assert_allclose(mprt["original"], 1.0)
    assert np.isnan(mprt["fc1"]).all()  # the last step: every layer re-initialised
    explainers = {"LI": LayeredInfluence(model, [model.fc1]).fit(reference)}
    with pytest.warns(CaptumSSAWarning, match="one class"):
        table = compare(
            model,
            explainers,
            x,
            y,
            metrics=["quantus:MPRT", "randomisation"],
            fit_inputs=reference,
        )
    assert table.errors == {}  # NaN because unfittable, not a failure
    assert np.isnan(table.values["LI"]["quantus:MPRT"]).all()
    assert np.isnan(table.values["LI"]["randomisation"]).all()


def test_layers_may_be_modules_and_several_need_a_reduction(setup):
    model, x, y, reference = setup
    ref = torch.from_numpy(reference)
    kwargs = {"method": "InactiveStateSensitivity", "fit_inputs": reference}
    by_name = quantus_explain(model, x, y, layer="conv2", **kwargs)
    # two explainers: Insens's jacobian_mode="auto" times its strategies in each, and
    # two strategies agree up to rounding only
    same = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(
        quantus_explain(model, x, y, layer=model.conv2, **kwargs), by_name, **same
    )
    # Quantus explains on copies of the model: the user's module names the copy's layer
    model_copy = copy.deepcopy(model)
    np.testing.assert_allclose(
        quantus_explain(model_copy, x, y, layer=model.conv2, **kwargs),
        quantus_explain(model_copy, x, y, layer="conv2", **kwargs),
        **same,
    )
    with pytest.raises(ValueError, match="layer_reduction"):
        quantus_explain(model, x, y, layer=[model.conv1, "conv2"], **kwargs)
    maps = [
        InactiveStateSensitivity(model, layer).fit(ref).attribute(torch.from_numpy(x)).numpy()
        for layer in (model.conv1, model.conv2)
    ]
    summed = quantus_explain(
        model, x, y, layer=[model.conv1, "conv2"], layer_reduction="sum", **kwargs
    )
    np.testing.assert_allclose(summed, maps[0] + maps[1], rtol=1e-5, atol=1e-6)
    averaged = quantus_explain(
        model, x, y, layer=["conv1", model.conv2], layer_reduction="mean", **kwargs
    )
    np.testing.assert_allclose(averaged, (maps[0] + maps[1]) / 2, rtol=1e-5, atol=1e-6)
    slp = [
        SwitchedLinearProjection(model, layer).attribute(
            torch.from_numpy(x), target=torch.from_numpy(y)
        )
        for layer in (model.fc1, model.fc2)
    ]
    np.testing.assert_allclose(
        quantus_explain(
            model,
            x,
            y,
            method="SwitchedLinearProjection",
            layer=[model.fc1, model.fc2],
            layer_reduction="sum",
        ),
        (slp[0] + slp[1]).detach().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="not a module of this model"):
        quantus_explain(model, x, y, layer=torch.nn.Linear(2, 2), **kwargs)
    with pytest.raises(ValueError, match="does not apply"):
        quantus_explain(
            model, x, y, method="LayeredInfluence", fit_inputs=reference, layer_reduction="sum"
        )


def test_curve_metrics_keep_their_curves_and_are_summarised_by_their_area(setup):
    quantus = pytest.importorskip("quantus")
    from captum.attr import Saliency

    model, x, y, _ = setup
    options = {"features_in_step": 20}  # 100 features: curves of 5 points
    table = compare(
        model,
        {"Saliency": Saliency(model)},
        torch.from_numpy(x),
        torch.from_numpy(y),
        metrics=["quantus:PixelFlipping"],
        metric_kwargs={"quantus:PixelFlipping": options},
    )
    curves = quantus.PixelFlipping(disable_warnings=True, **options)(
        model=model,
        x_batch=x,
        y_batch=y,
        a_batch=None,
        explain_func=quantus_explain,
        explain_func_kwargs={"method": "Saliency"},
    )
    cell = table.values["Saliency"]["quantus:PixelFlipping"]
    assert cell.shape == (len(x), 5)
    np.testing.assert_allclose(cell, np.asarray(curves), rtol=1e-6)
    areas = [sum((c[k] + c[k + 1]) / 2 / 4 for k in range(4)) for c in curves]
    assert table.mean("Saliency", "quantus:PixelFlipping") == pytest.approx(np.mean(areas))
    assert "area" in table.notes["quantus:PixelFlipping"]
