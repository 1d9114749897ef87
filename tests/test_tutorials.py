"""The circles reproduction of the SSA paper (tutorials/ssa_circles.py) in its fast mode."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))

import ssa_circles

from captum_ssa import StepwiseSensitivity


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory: pytest.TempPathFactory) -> ssa_circles.Reproduction:
    output_dir = tmp_path_factory.mktemp("ssa_circles")
    result = ssa_circles.main(["--fast", "--output-dir", str(output_dir)])
    assert (output_dir / "ssa_circles.md").read_text() == result.markdown
    return result


def test_the_trained_mlps_solve_circles(reproduction: ssa_circles.Reproduction) -> None:
    # otherwise the graphs and rankings describe a network that has not learnt the task
    for accuracies in reproduction.model_accuracy.values():
        assert len(accuracies) == reproduction.seeds
        assert min(accuracies) > 0.9


def test_every_strategy_row_is_present(reproduction: ssa_circles.Reproduction) -> None:
    ranking_rows = {strategy.name for strategy in ssa_circles.RANKING_STRATEGIES}
    graph_rows = {strategy.name for strategy in ssa_circles.GRAPH_STRATEGIES}
    assert set(reproduction.rankings) == ranking_rows
    assert set(reproduction.graphs) == graph_rows
    assert set(reproduction.honesty) == graph_rows
    for name in graph_rows:
        assert set(reproduction.graphs[name]) == set(ssa_circles.PAPER_GRAPH_COLUMNS)
        assert name in reproduction.markdown


def test_rank_correlations_are_finite_and_bounded(
    reproduction: ssa_circles.Reproduction,
) -> None:
    for columns in reproduction.rankings.values():
        for column, values in columns.items():
            assert len(values) == reproduction.seeds
            for rho in values:
                if "(accuracy)" in column and math.isnan(rho):
                    continue  # accuracy drops may all tie at 0: rho is undefined then
                assert math.isfinite(rho) and -1 <= rho <= 1, (column, rho)


def test_graph_accuracies_and_rates_are_fractions(
    reproduction: ssa_circles.Reproduction,
) -> None:
    for table in (reproduction.graphs, reproduction.honesty):
        for columns in table.values():
            for column, values in columns.items():
                for value in values:
                    if "precision" in column and math.isnan(value):
                        continue  # a class graph that never predicts its class
                    assert 0 <= value <= 1, (column, value)


def test_signed_activations_equal_the_absolute_ones_on_relu_outputs(
    reproduction: ssa_circles.Reproduction,
) -> None:
    # a ReLU output's mean is non-negative, so |mean a| == mean a: the paper's
    # ACTIVATIONS and ACTIVATIONS_ABS rows are identical, and so are ours
    assert reproduction.graphs["ACTIVATIONS"] == reproduction.graphs["ACTIVATIONS_ABS"]
    assert reproduction.honesty["ACTIVATIONS"] == reproduction.honesty["ACTIVATIONS_ABS"]


def test_signed_weight_act_differs_from_weight_act_abs_only_by_the_weights_sign() -> None:
    # the paper's WEIGHT_ACT and WEIGHT_ACT_ABS rows differ: the weights are
    # signed, the mean ReLU activations are not. Below the logits the two
    # relevance matrices must agree up to sign, and the signed one must have
    # negative entries (else the rows could not differ).
    data = ssa_circles.load_circles()
    model = ssa_circles.train_mlp(data, ssa_circles.GRAPH_HIDDEN, seed=0, epochs=200)
    ssa = StepwiseSensitivity(model, model.ssa_layers())
    signed = ssa.attribute(
        data.x_train, target=data.y_train, relevance="weight_activation", absolute=False
    )
    absolute = ssa.attribute(data.x_train, target=data.y_train, relevance="weight_act_abs")
    signed_matrix = signed.relevance_matrix(model.fc3, model.relu2)
    torch.testing.assert_close(
        signed_matrix.abs(), absolute.relevance_matrix(model.fc3, model.relu2)
    )
    assert (signed_matrix < 0).any()


def test_the_papers_conv_net_shape_has_one_pool_between_the_convs() -> None:
    # the SSA paper: conv 3x3x64, max-pool, conv 3x3x64, fc 328, fc 194, 10 outputs
    import digits

    net = digits.PaperConvNet()
    kinds = [type(m).__name__ for m in net.children()]
    assert kinds == [
        "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "Flatten",
        "Linear", "ReLU", "Linear", "ReLU", "Linear",
    ]  # fmt: skip
    assert [net.conv1.out_channels, net.conv2.out_channels] == [64, 64]
    assert [net.fc1.out_features, net.fc2.out_features] == [328, 194]
    # its forward runs the children in order: the same output as the layers chained by hand
    x = torch.rand(5, 1, 8, 8)
    chained = x
    for module in net.children():
        chained = module(chained)
    assert net(x).shape == (5, 10)
    assert torch.equal(net(x), chained)
