"""compare() and its ComparisonTable: rows, columns, raw values, outputs."""

from __future__ import annotations

import csv

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from captum_ssa import CaptumSSAWarning, SwitchedLinearProjection
from captum_ssa.evaluation import ComparisonTable, Explainer, compare, selectivity, topk_flip
from tests.models import build

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def table_and_data():
    model, _, shape = build("cnn", 0)
    inputs = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainers = {
        "Saliency": Saliency(model),
        "IG": Explainer(IntegratedGradients, attribute_kwargs={"n_steps": 4}),
        "SLP": SwitchedLinearProjection(model, model.fc2),
        "plain": lambda x, target: InputXGradient(model).attribute(x, target=target),
    }
    table = compare(
        model,
        explainers,
        inputs,
        targets,
        metric_kwargs={
            "infidelity": {"n_perturb_samples": 3},
            "sensitivity_max": {"n_perturb_samples": 3},
            "continuity": {"n_samples": 2},
            "topk_flip": {"k": 3},
        },
    )
    return table, model, inputs, targets, before


def test_one_row_per_method_one_column_per_metric(table_and_data):
    table = table_and_data[0]
    assert table.methods == ["Saliency", "IG", "SLP", "plain"]
    assert table.metrics == [
        "infidelity",
        "sensitivity_max",
        "selectivity",
        "continuity",
        "topk_flip",
        "randomisation",
    ]
    for method in table.methods:
        for metric in table.metrics:
            assert table.values[method][metric].shape == (4,)
    # a plain callable cannot be rebuilt on a randomised copy
    assert np.isnan(table.values["plain"]["randomisation"]).all()
    assert not np.isnan(table.values["IG"]["randomisation"]).any()


def test_cells_are_the_metric_functions_on_the_same_attributions(table_and_data):
    table, model, inputs, targets, _ = table_and_data
    saliency = Saliency(model).attribute(inputs, target=targets)
    aopc = selectivity(model, inputs, saliency, targets).aopc
    np.testing.assert_allclose(table.values["Saliency"]["selectivity"], aopc.numpy(), rtol=1e-6)
    flipped = topk_flip(model, inputs, saliency, k_max=3).flipped[:, -1]
    np.testing.assert_array_equal(table.values["Saliency"]["topk_flip"], flipped.float().numpy())
    cell = table.values["SLP"]["selectivity"]
    assert table.mean("SLP", "selectivity") == pytest.approx(cell.mean())
    assert table.spread("SLP", "selectivity") == pytest.approx(cell.std())


def test_the_users_model_is_untouched(table_and_data):
    _, model, _, _, before = table_and_data
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not module._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())


def test_markdown_csv_and_text(table_and_data, tmp_path):
    table = table_and_data[0]
    markdown = table.to_markdown()
    lines = markdown.splitlines()
    assert len(lines) == 2 + len(table.methods)
    assert "selectivity ↑" in lines[0] and "infidelity ↓" in lines[0]
    assert lines[4].split("|")[1].strip() == "SLP"
    assert lines[5].split("|")[-2].strip() == "n/a"
    path = tmp_path / "table.csv"
    table.to_csv(path)
    with open(path) as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == len(table.methods) * len(table.metrics)
    for record in records:
        expected = table.mean(record["method"], record["metric"])
        if np.isnan(expected):
            assert record["mean"] == "nan" and record["n"] == "0"
        else:
            assert float(record["mean"]) == pytest.approx(expected)
            assert float(record["std"]) == pytest.approx(
                table.spread(record["method"], record["metric"])
            )
    text = str(table)
    assert all(method in text for method in table.methods)
    assert repr(table).startswith("ComparisonTable(4 methods × 6 metrics)")


def test_plot_makes_one_panel_per_metric(table_and_data):
    import matplotlib.pyplot as plt

    figure = table_and_data[0].plot(columns=4)
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert len(visible) == 6
    assert len(visible[0].patches) == 4  # one bar per method
    plt.close(figure)


def test_to_dataframe_when_pandas_is_there(table_and_data):
    pandas = pytest.importorskip("pandas")
    frame = table_and_data[0].to_dataframe()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 24


def test_unknown_metric_is_an_error():
    model, _, shape = build("mlp", 0)
    with pytest.raises(ValueError, match="unknown metric"):
        compare(model, {"s": Saliency(model)}, torch.randn(2, *shape), 0, metrics=["nope"])


def test_table_from_values_handles_nan_cells():
    table = ComparisonTable(values={"a": {"m": np.array([1.0, np.nan, 3.0])}})
    assert table.mean("a", "m") == 2.0


def test_a_failing_cell_is_nan_with_its_reason_and_the_table_is_kept():
    model, _, shape = build("mlp", 0)
    inputs = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2])

    def broken(x, target):
        raise RuntimeError("no attributions here")

    with pytest.warns(CaptumSSAWarning, match="failed, its cell is NaN"):
        table = compare(
            model,
            {"Saliency": Saliency(model), "broken": broken},
            inputs,
            targets,
            metrics=["selectivity", "topk_flip"],
            metric_kwargs={"topk_flip": {"perturbation": "nope"}},
        )
    aopc = selectivity(model, inputs, Saliency(model).attribute(inputs, target=targets), targets)
    np.testing.assert_allclose(table.values["Saliency"]["selectivity"], aopc.aopc.numpy())
    assert np.isnan(table.values["Saliency"]["topk_flip"]).all()
    assert np.isnan(table.values["broken"]["selectivity"]).all()
    assert table.errors == {
        "Saliency": {
            "topk_flip": "ValueError: perturbation must be 'baseline', 'negate' or "
            "'shift', not 'nope'"
        },
        "broken": {
            "selectivity": "RuntimeError: no attributions here",
            "topk_flip": "RuntimeError: no attributions here",
        },
    }
    text = str(table).splitlines()
    assert text[3] == "errors:"
    assert text[4:] == [
        "  Saliency / topk_flip: " + table.errors["Saliency"]["topk_flip"],
        "  broken / selectivity: RuntimeError: no attributions here",
        "  broken / topk_flip: RuntimeError: no attributions here",
    ]
    markdown = table.to_markdown().splitlines()
    assert markdown[2].split("|")[-2].strip() == "error"
    assert markdown[5:] == ["- " + line.strip() for line in text[4:]]


def test_a_progress_bar_over_the_cells_only_when_asked(capsys):
    model, _, shape = build("mlp", 0)
    inputs = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    explainers = {"Saliency": Saliency(model), "IxG": InputXGradient(model)}
    compare(model, explainers, inputs, 0, metrics=["topk_flip"])
    assert capsys.readouterr().err == ""
    compare(model, explainers, inputs, 0, metrics=["topk_flip", "selectivity"], show_progress=True)
    bar = capsys.readouterr().err
    assert "compare" in bar and "4/4" in bar


def test_curve_cells_are_summarised_by_their_area_over_x_in_0_1():
    curves = np.array([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0], [0.8, 0.2, 0.2]])
    table = ComparisonTable(values={"a": {"PixelFlipping": curves, "plain": np.ones(3)}})
    areas = []
    for curve in curves:  # trapezoids of width 1 / (L - 1)
        steps = len(curve) - 1
        areas.append(sum((curve[k] + curve[k + 1]) / 2 / steps for k in range(steps)))
    np.testing.assert_allclose(table.per_example("a", "PixelFlipping"), areas)
    assert table.mean("a", "PixelFlipping") == pytest.approx(np.mean(areas))
    assert table.spread("a", "PixelFlipping") == pytest.approx(np.std(areas))
    assert table.summary()[0]["n"] == 3
    assert table.values["a"]["PixelFlipping"] is curves  # the curves stay as they were
