"""Is a tensor a piecewise-linear function of the inputs?

Switched linear projections are exact only when every operation between the
inputs and the neuron is piecewise linear. Modules cannot tell (``F.relu`` and
``torch.sigmoid`` leave no module behind), so we read the autograd graph that
produced the tensor: each node is an operation, named after its backward.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from captum_ssa._utils.autograd_graph import (
    is_node_of,
    is_piecewise_linear,
    nodes_reaching,
    op_name,
)
from captum_ssa._utils.warn import CaptumSSAWarning, warn


class NotPiecewiseLinearWarning(CaptumSSAWarning):
    """The network is not piecewise linear between the inputs and a layer: a switched
    linear projection there is only a local linearisation (code that shows projections
    only where they are exact catches this one)."""


def nonlinear_operations(output: Tensor, inputs: Sequence[Tensor]) -> list[str]:
    """Names of the operations between ``inputs`` and ``output`` that are not
    piecewise linear in the inputs (empty when the map is piecewise linear).

    Only operations computed from the inputs count, and each is judged by the
    one table of :mod:`captum_ssa._utils.autograd_graph`: a product or a
    division by a constant is linear, of two input-dependent factors or by an
    input-dependent divisor it is not; batch norm is linear only when its
    statistics are constants (eval mode). The history of the inputs themselves
    (they may be a hidden layer's outputs) is not looked at.
    """
    is_input = is_node_of(inputs)
    reaching, nodes = nodes_reaching(output.grad_fn, is_input)
    found = {
        op_name(node)
        for node in nodes
        if id(node) in reaching
        and not is_input(node)
        and not is_piecewise_linear(node, lambda child: id(child) in reaching)
    }
    return sorted(found)


def warn_if_not_piecewise_linear(
    explainer_name: str, output: Tensor, inputs: Sequence[Tensor]
) -> bool:
    """Warn that the projection of ``explainer_name`` is only a local
    linearisation where ``output`` is not piecewise linear in ``inputs``;
    whether it warned.

    The explainer keeps what this returns, to warn once per instance.
    """
    operations = nonlinear_operations(output, inputs)
    if operations:
        warn(
            f"{explainer_name}: the network is not piecewise linear between "
            f"the inputs and the layer (operations: {', '.join(operations)}); the "
            "switched linear projection is only a first-order local linearisation "
            "there, not an exact decomposition, and the convergence delta reports "
            "its real error",
            NotPiecewiseLinearWarning,
        )
    return bool(operations)
