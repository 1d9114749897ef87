"""compare() and its ComparisonTable: rows, columns, raw values, outputs."""

from __future__ import annotations

import csv

import matplotlib
import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

from captum_ssa import SwitchedLinearProjection
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
