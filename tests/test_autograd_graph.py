"""The autograd-graph walk and the one table of operations."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from captum_ssa._utils.autograd_graph import (
    OpKind,
    classify,
    is_node_of,
    is_piecewise_linear,
    nodes_reaching,
    op_name,
    walk,
)

DEEPER_THAN_RECURSION = 3000


def test_a_graph_deeper_than_the_recursion_limit_is_walked_whole():
    x = torch.randn(3, requires_grad=True)
    y = x
    depth = sys.getrecursionlimit() + 500
    for _ in range(depth):
        y = y * 1.5
    nodes = list(walk(y.grad_fn))
    assert len(nodes) == depth + 1  # the products and x's gradient accumulator
    assert sum(type(n).__name__.startswith("Mul") for n in nodes) == depth


def test_shared_branches_are_visited_once_and_every_node_is_distinct():
    x = torch.randn(3, requires_grad=True)
    shared = torch.relu(x)
    y = (shared * 2 + shared.exp()).sum()
    nodes = list(walk(y.grad_fn))
    assert len({id(n) for n in nodes}) == len(nodes)
    names = sorted(type(n).__name__.rstrip("0123456789") for n in nodes)
    assert names.count("ReluBackward") == 1
    assert names.count("AccumulateGrad") == 1
    assert set(names) >= {"SumBackward", "AddBackward", "MulBackward", "ExpBackward"}


def test_no_graph_gives_no_nodes():
    assert list(walk(None)) == []


def test_the_walk_stops_below_the_nodes_it_is_told_to():
    x = torch.randn(3, requires_grad=True)
    hidden = torch.tanh(x)
    y = (hidden * 2).sum()
    names = [op_name(n) for n in walk(y.grad_fn, stop=is_node_of([hidden]))]
    assert names.count("Tanh") == 1  # the hidden tensor's own node is met
    assert "AccumulateGrad" not in names  # but nothing below it


def test_op_names_drop_the_backward_suffix_digits_and_namespace():
    x = torch.randn(2, 3, requires_grad=True)
    assert op_name(torch.relu(x).grad_fn) == "Relu"
    assert op_name(x.sum(1).grad_fn) == "Sum"  # SumBackward1
    assert op_name(x.clone().grad_fn.next_functions[0][0]) == "AccumulateGrad"


# --------------------------------------------------------- piecewise linearity


def _nonlinear_in(output: torch.Tensor, *inputs: torch.Tensor) -> list[str]:
    """The operations computed from ``inputs`` that the table calls not linear."""
    is_input = is_node_of(inputs)
    reaching, nodes = nodes_reaching(output.grad_fn, is_input)
    return sorted(
        op_name(node)
        for node in nodes
        if id(node) in reaching
        and not is_input(node)
        and not is_piecewise_linear(node, lambda child: id(child) in reaching)
    )


def _deep_chain(x: torch.Tensor, depth: int) -> torch.Tensor:
    y = x
    for layer in range(depth):
        y = torch.relu(y * 0.9 + 0.1) if layer % 2 else y.view(-1) + 1
    return y


def test_a_deep_piecewise_linear_graph_is_judged_without_recursion():
    x = torch.randn(4, requires_grad=True)
    y = _deep_chain(x, DEEPER_THAN_RECURSION)
    assert _nonlinear_in(y, x) == []
    assert _nonlinear_in(_deep_chain(torch.tanh(y), DEEPER_THAN_RECURSION), x) == ["Tanh"]


def test_division_is_linear_only_by_a_divisor_independent_of_the_input():
    x = torch.randn(2, 3, requires_grad=True)
    scale = torch.randn(3, requires_grad=True)  # a parameter: computed, yet no input
    assert _nonlinear_in(x / 2, x) == []
    assert _nonlinear_in(x / scale.abs().exp(), x) == []
    assert "Div" in _nonlinear_in(x / x.norm(), x)
    assert "Div" in _nonlinear_in(x / torch.relu(x).sum(1, keepdim=True), x)


def test_a_product_is_linear_only_with_one_input_dependent_factor():
    x = torch.randn(2, 3, requires_grad=True)
    weight = torch.randn(3, 3, requires_grad=True)
    assert _nonlinear_in(x * weight[0], x) == []
    assert _nonlinear_in(x @ weight, x) == []
    assert _nonlinear_in(F.linear(x, weight, weight[0]), x) == []
    assert _nonlinear_in(x * x, x) == ["Mul"]
    assert _nonlinear_in(x @ torch.relu(x).T, x) == ["Mm"]
    # the bias of addmm is added, not multiplied: a residual there stays linear
    assert _nonlinear_in(torch.addmm(x, x, weight), x) == []


def test_a_convolution_with_an_input_dependent_kernel_is_not_linear():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    kernel = torch.randn(3, 2, 3, 3, requires_grad=True)
    assert _nonlinear_in(F.conv2d(x, kernel), x) == []
    assert _nonlinear_in(F.conv2d(x, x[:, :, :3, :3].expand(3, 2, 3, 3)), x) == ["Convolution"]


def test_only_operations_computed_from_the_inputs_are_judged():
    x = torch.randn(3, requires_grad=True)
    hidden = torch.sigmoid(x)
    assert _nonlinear_in(hidden * 2 + torch.tanh(torch.ones(3, requires_grad=True)), hidden) == []


# ------------------------------------------------------------------ batch norm

# Each backend names its own node; these read the saved training flag.
FLAGGED_BATCH_NORMS = (
    "NativeBatchNormBackward0",
    "NativeBatchNormLegitBackward0",
    "NativeBatchNormLegitBackward1",
    "CudnnBatchNormBackward0",
    "MiopenBatchNormBackward0",
)


def _stand_in(name: str, **saved: bool) -> SimpleNamespace:
    """An object shaped like an autograd node: its name and saved attributes."""
    return SimpleNamespace(name=lambda: name, next_functions=(), **saved)


def _is_eval_batch_norm(kind: OpKind) -> bool:
    return bool(kind & OpKind.PRODUCT and kind & OpKind.ELEMENTWISE)


@pytest.mark.parametrize("name", FLAGGED_BATCH_NORMS)
@pytest.mark.parametrize("training", [False, True])
def test_every_batch_norm_backend_is_read_by_its_training_flag(name, training):
    kind = classify(_stand_in(name, _saved_training=training))
    assert kind & OpKind.BATCH_NORM and kind & OpKind.KEEPS_CHANNELS
    assert _is_eval_batch_norm(kind) is not training
    assert not kind & OpKind.PIECEWISE_LINEAR  # linear only as a product with its weight


@pytest.mark.parametrize(
    ("name", "training"),
    [
        ("NativeBatchNormLegitNoTrainingBackward0", False),
        ("BatchNormNoUpdateBackward0", False),
        ("BatchNormWithUpdateBackward0", True),
    ],
)
def test_batch_norms_named_for_their_mode_need_no_flag(name, training):
    assert _is_eval_batch_norm(classify(_stand_in(name))) is not training


def test_a_batch_norm_without_a_readable_flag_counts_as_training():
    assert not _is_eval_batch_norm(classify(_stand_in("CudnnBatchNormBackward0")))


def _cpu_batch_norms(channels: int, training: bool) -> list:
    """Every batch-norm entry point CPU runs, in one mode, as functions of the input."""
    weight, bias = torch.rand(channels) + 0.5, torch.randn(channels)
    mean, var = torch.randn(channels), torch.rand(channels) + 0.5
    aten = torch.ops.aten

    def stats():  # fresh running statistics for each call: training updates them
        return mean.clone(), var.clone()

    functions = [
        lambda x: F.batch_norm(x, *stats(), weight, bias, training=training),
        lambda x: aten._native_batch_norm_legit(x, weight, bias, *stats(), training, 0.1, 1e-5),
    ]
    if training:
        functions += [
            lambda x: aten._native_batch_norm_legit(x, weight, bias, True, 0.1, 1e-5),
            lambda x: aten._batch_norm_with_update(x, weight, bias, *stats(), 0.1, 1e-5),
        ]
    else:
        functions += [
            lambda x: aten._native_batch_norm_legit_no_training(
                x, weight, bias, mean, var, 0.1, 1e-5
            ),
            lambda x: aten._batch_norm_no_update(x, weight, bias, mean, var, 0.1, 1e-5),
        ]
    return [lambda x, f=f: _first(f(x)) for f in functions]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _is_affine(function, x: torch.Tensor) -> bool:
    """Plain check: f(a) + f(b) = f(a + b) + f(0) for random a, b."""
    a, b = torch.randn_like(x), torch.randn_like(x)
    gap = function(a) + function(b) - function(a + b) - function(torch.zeros_like(x))
    return bool(gap.abs().max() < 1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_cpu_batch_norm_nodes_are_classified_as_the_map_they_compute(training):
    x = torch.randn(6, 3, 2, 2, requires_grad=True)
    names = set()
    for function in _cpu_batch_norms(3, training):
        output = function(x)
        name = output.grad_fn.name()
        names.add(name)
        assert classify(output.grad_fn) & OpKind.BATCH_NORM, name
        affine = _is_affine(function, x.detach())
        assert affine is not training, name  # the reference agrees with the mode
        assert _is_eval_batch_norm(classify(output.grad_fn)) is affine, name
        assert (_nonlinear_in(output, x) == []) is affine, name
    assert len(names) == 4


# ------------------------------------------------------------------- channels


def test_reductions_keep_channels_only_over_the_dims_after_them():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    for reduced, keeps in [
        (x.mean((2, 3)), True),
        (x.sum(-1), True),
        (x.mean(1), False),
        (x.sum((0, 2)), False),
        (x.mean(), False),
    ]:
        assert bool(classify(reduced.grad_fn) & OpKind.KEEPS_CHANNELS) is keeps
        assert classify(reduced.grad_fn) & OpKind.PIECEWISE_LINEAR


def test_elementwise_functions_and_pooling_are_told_apart():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    sigmoid, pool = classify(torch.sigmoid(x).grad_fn), classify(F.max_pool2d(x, 2).grad_fn)
    assert sigmoid & OpKind.ELEMENTWISE and not sigmoid & OpKind.PIECEWISE_LINEAR
    assert pool & OpKind.KEEPS_CHANNELS and pool & OpKind.PIECEWISE_LINEAR
    assert not pool & OpKind.ELEMENTWISE
    assert classify(torch.softmax(x, 1).grad_fn) == OpKind.NONE


def test_activations_are_one_kind_however_they_are_applied():
    x = torch.randn(2, 3, requires_grad=True)
    activations = [
        F.relu(x),
        F.relu6(x),
        F.leaky_relu(x, 0.1),
        F.gelu(x),
        F.gelu(x, approximate="tanh"),
        F.silu(x),
        torch.tanh(x),
        torch.sigmoid(x),
        F.elu(x),
        F.selu(x),
        F.celu(x),
        F.softplus(x),
        F.mish(x),
        F.hardswish(x),
        F.hardsigmoid(x),
        F.logsigmoid(x),
        F.prelu(x, torch.tensor([0.2])),
        torch.nn.GELU()(x),
    ]
    for output in activations:
        assert classify(output.grad_fn) & OpKind.ACTIVATION, output.grad_fn.name()
    others = [x.exp(), x.log1p(), x * 2, torch.softmax(x, 1), F.layer_norm(x, (3,))]
    for output in others:
        assert not classify(output.grad_fn) & OpKind.ACTIVATION, output.grad_fn.name()
    # the flag adds to a kind, it changes nothing else
    assert classify(torch.tanh(x).grad_fn) & OpKind.ELEMENTWISE
    assert classify(F.relu(x).grad_fn) & OpKind.PIECEWISE_LINEAR


def test_nodes_reaching_a_target_in_a_deep_graph():
    x = torch.randn(3, requires_grad=True)
    below = torch.relu(x)
    y = below
    for _ in range(DEEPER_THAN_RECURSION):
        y = y + 1
    side = torch.randn(3, requires_grad=True) * 2  # reaches the output, not the target
    reaching, nodes = nodes_reaching((y + side).grad_fn, is_node_of([below]))
    names = [op_name(n) for n in nodes if id(n) in reaching]
    assert names.count("Add") == DEEPER_THAN_RECURSION + 1 and names.count("Relu") == 1
    assert "Mul" not in names and "AccumulateGrad" not in names
