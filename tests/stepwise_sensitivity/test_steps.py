"""The four Steps of SSA, one function each, on small examples and against the
reference's loops."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_ssa import relevance as relevance_functions
from captum_ssa._core.stepwise_sensitivity import (
    aggregate_datapoints,
    aggregate_upper_neurons,
    relevance_tensor,
    threshold,
)
from captum_ssa._core.stepwise_sensitivity.weighted_connection import record_weighted_calls
from captum_ssa._utils.hooks import observe_layer_calls, run_and_capture
from captum_ssa.relevance import LayerPair
from tests.stepwise_sensitivity.references import (
    ALL_RELEVANCES,
    PAPER_PRESETS,
    case,
    most_relevant,
)

# ---------------------------------------------------------------- the steps


def test_step_functions_on_a_small_example():
    omega = torch.tensor([[[1.0, 0.0, 0.0, 0.0, 9.0], [0.0, 0.0, 5.0, 0.0, 0.0]]])
    mean = aggregate_datapoints(omega, "mean")
    torch.testing.assert_close(mean, torch.tensor([[0.5, 0.0, 2.5, 0.0, 4.5]]))
    tukey = aggregate_datapoints(omega, "tukey")
    torch.testing.assert_close(
        tukey, torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.5]])
    )  # 1 is inside the fence
    vector = aggregate_upper_neurons(torch.tensor([[1.0, 0.0], [3.0, 2.0]]))
    torch.testing.assert_close(vector, torch.tensor([2.0, 1.0]))
    kept, edges = threshold(mean, mean[0], torch.tensor([3]), "global", percentile=50)
    assert kept.tolist() == [2, 4]
    assert edges.tolist() == [[2, 3], [4, 3]]


@st.composite
def integer_matrices(draw: Any) -> Tensor:
    rows = draw(st.integers(1, 4))
    columns = draw(st.integers(1, 7))
    values = draw(st.lists(st.integers(0, 3), min_size=rows * columns, max_size=rows * columns))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, columns)


@settings(max_examples=40, deadline=None)
@given(
    matrix=integer_matrices(),
    mode=st.sampled_from(["global", "local"]),
    percentile=st.sampled_from([0, 25, 50, 90, 100]),
    branching=st.one_of(st.none(), st.integers(1, 4)),
    max_neurons=st.one_of(st.none(), st.integers(1, 4)),
)
def test_threshold_breaks_ties_by_lower_index_like_the_reference(
    matrix, mode, percentile, branching, max_neurons
):
    """Small integers make ties common; the result must match the plain rules."""
    upper = torch.arange(len(matrix)) * 2
    vector = aggregate_upper_neurons(matrix)
    kept, edges = threshold(matrix, vector, upper, mode, percentile, branching, max_neurons)
    values = matrix.double().numpy()
    if mode == "global":
        chosen = most_relevant(vector.double().numpy(), percentile, branching)
        if max_neurons is not None and len(chosen) > max_neurons:
            chosen = sorted(sorted(chosen, key=lambda k: (-vector[k], k))[:max_neurons])
        pairs = {(k, int(n)) for k in chosen for n in upper}
    else:
        choices = {j: most_relevant(values[j], percentile, branching) for j in range(len(values))}
        chosen = sorted(set().union(*choices.values()))
        if max_neurons is not None and len(chosen) > max_neurons:
            count = {k: sum(k in c for c in choices.values()) for k in chosen}
            weight = {k: sum(values[j][k] for j in choices if k in choices[j]) for k in chosen}
            chosen = sorted(sorted(chosen, key=lambda k: (-count[k], -weight[k], k))[:max_neurons])
        pairs = {(k, 2 * j) for j in choices for k in choices[j] if k in chosen}
    assert kept.tolist() == chosen
    assert {tuple(p) for p in edges.tolist()} == pairs
    assert edges.tolist() == sorted(edges.tolist())


def make_pair(model: nn.Module, lower: nn.Module, upper: nn.Module, x: Tensor) -> LayerPair:
    inputs = (x.clone().requires_grad_(),)
    with (
        record_weighted_calls(list(model.modules())) as weighted,
        observe_layer_calls([lower, upper], [False, True]) as calls,
    ):
        _, (lower_output, upper_output) = run_and_capture(model, inputs, [lower, upper])
    return LayerPair(
        "lower",
        "upper",
        lower,
        upper,
        lower_output,
        upper_output,
        calls.inputs.get(1),
        model,
        inputs,
        weighted_calls=weighted,
    )


@pytest.mark.parametrize("relevance", ALL_RELEVANCES + PAPER_PRESETS)
def test_step_one_on_a_batch_equals_step_one_per_example(relevance):
    model, layers, shape, _ = case("direct_cnn")
    x = torch.randn(5, *shape)
    neurons = torch.tensor([0, 3])
    function = relevance_functions.BUILT_IN[relevance]
    batch = relevance_tensor(make_pair(model, layers[0], layers[1], x), neurons, function)
    for i in range(len(x)):
        single = relevance_tensor(
            make_pair(model, layers[0], layers[1], x[i : i + 1]), neurons, function
        )
        torch.testing.assert_close(batch[:, i : i + 1], single)
