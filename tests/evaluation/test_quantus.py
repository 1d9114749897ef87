"""quantus_explain: input-shaped results equal to the methods' own, fits cached by the
weights, and Quantus's MPRT, RandomLogit and FaithfulnessCorrelation with no glue."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from captum_ssa import InactiveStateSensitivity, LayeredInfluence, SwitchedLinearProjection
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
    np.testing.assert_array_equal(first, second)
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
