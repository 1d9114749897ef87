"""Which operations between the inputs and a tensor are not piecewise linear."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_ssa._utils.linearity import nonlinear_operations, warn_if_not_piecewise_linear

# double precision: the reference's second differences need it
_GENERATOR = torch.Generator().manual_seed(0)
_WEIGHT = torch.randn(4, 4, dtype=torch.float64, generator=_GENERATOR, requires_grad=True)
_BN_EVAL = nn.BatchNorm1d(4).double().eval()
_BN_TRAIN = nn.BatchNorm1d(4).double().train()
_LAYER_NORM = nn.LayerNorm(4).double()

FUNCTIONS = {
    "scaled": lambda x: x * 2 - 1,
    "halved": lambda x: x / 2,
    "by a parameter": lambda x: x / _WEIGHT[0].abs().exp(),
    "normalised": lambda x: x / x.norm(),
    "reciprocal": lambda x: 2 / x,
    "squared": lambda x: x * x,
    "linear relu": lambda x: torch.relu(x @ _WEIGHT) @ _WEIGHT,
    "self product": lambda x: x @ (x.T @ x),
    "pooled": lambda x: F.max_pool1d(x[:, None], 2).flatten(1) + x.abs()[:, :2],
    "where": lambda x: torch.where(x > 0, x, 0.1 * x),
    "eval batch norm": lambda x: _BN_EVAL(x),
    "training batch norm": lambda x: _BN_TRAIN(x),
    "layer norm": lambda x: _LAYER_NORM(x),
    "tanh": lambda x: torch.tanh(x) @ _WEIGHT,
    "softmax": lambda x: torch.softmax(x, 1),
    "residual": lambda x: x + F.linear(torch.relu(x), _WEIGHT),
}


def _is_locally_linear(function, x: torch.Tensor, samples: int = 4) -> bool:
    """Plain reference: a piecewise-linear map has no curvature away from its kinks,
    so central second differences along random directions vanish."""
    step = 1e-3
    with torch.no_grad():
        for _ in range(samples):
            h = torch.randn_like(x) * step
            curvature = function(x + h) + function(x - h) - 2 * function(x)
            if curvature.abs().max() > 1e-9:
                return False
    return True


@pytest.mark.parametrize("name", FUNCTIONS)
def test_agrees_with_the_second_difference_reference(name):
    function = FUNCTIONS[name]
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    found = nonlinear_operations(function(x), [x])
    assert (found == []) is _is_locally_linear(function, x.detach()), found


def test_the_history_of_hidden_inputs_is_not_judged():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    hidden = torch.sigmoid(x)
    assert nonlinear_operations(hidden @ _WEIGHT.detach(), [hidden]) == []
    assert nonlinear_operations(torch.sigmoid(hidden), [hidden]) == ["Sigmoid"]


def test_a_leaf_input_and_a_computed_input_together():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    hidden = torch.relu(x)
    # x * hidden: two factors that depend on the inputs
    assert nonlinear_operations(x * hidden, [x, hidden]) == ["Mul"]
    assert nonlinear_operations(x + hidden, [x, hidden]) == []


def test_warns_naming_the_operations_and_says_whether_it_warned():
    # the explainers keep the answer, to warn once per instance (their own tests)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning, match=r"Projection: .*operations: Div, LinalgVectorNorm"):
        assert warn_if_not_piecewise_linear("Projection", x / x.norm(), [x]) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_not_piecewise_linear("Other", x * 2, [x]) is False
