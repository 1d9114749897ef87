"""Is a tensor a piecewise-linear function of the inputs?

Switched linear projections are exact only when every operation between the
inputs and the neuron is piecewise linear. Modules cannot tell (``F.relu`` and
``torch.sigmoid`` leave no module behind), so we read the autograd graph that
produced the tensor: each node is an operation, named after its backward.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Optional

from torch import Tensor

from captum_ssa._utils.autograd_graph import walk

# Operations that are piecewise linear in each of their arguments, whatever those
# are, by their backward node's name without "Backward" and trailing digits.
_PIECEWISE_LINEAR_OPS = frozenset(
    {
        "AccumulateGrad",
        "Add",
        "Sub",
        "Neg",
        "Sum",
        "Mean",
        "View",
        "UnsafeView",
        "Reshape",
        "ReshapeAlias",
        "Expand",
        "Squeeze",
        "Unsqueeze",
        "Permute",
        "Transpose",
        "T",
        "Clone",
        "ToCopy",
        "Cat",
        "Stack",
        "Gather",
        "Narrow",
        "Flip",
        "Roll",
        "Repeat",
        "ConstantPadNd",
        "Relu",
        "Threshold",
        "LeakyRelu",
        "Hardtanh",
        "Clamp",
        "ClampMin",
        "ClampMax",
        "Abs",
        "Maximum",
        "Minimum",
        "Max",
        "Min",
        "Addmm",
        "Addmv",
        "Alias",
        "AsStrided",
        "Flatten",
    }
)
_PIECEWISE_LINEAR_FAMILIES = (
    "MaxPool",
    "AvgPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "Convolution",
    "ReflectionPad",
    "ReplicationPad",
    "Upsample",
    "Index",
    "Slice",
    "Select",
    "Split",
    "Unbind",
    "Copy",
)
# Products: linear only while at most one factor depends on the inputs. Batch
# norm is one in eval mode (its statistics are constants) on every backend: CPU
# and CUDA's native kernel, cuDNN and MIOpen each name their own node.
_PRODUCT_OPS = frozenset(
    {"Mul", "Div", "Mm", "Bmm", "Mv", "Dot", "NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm"}
)


def _is_piecewise_linear_op(name: str) -> bool:
    return name in _PIECEWISE_LINEAR_OPS or name.startswith(_PIECEWISE_LINEAR_FAMILIES)


def _op_name(node: Any) -> str:
    return type(node).__name__.rstrip("0123456789").removesuffix("Backward")


def nonlinear_operations(output: Tensor, inputs: Sequence[Tensor]) -> list[str]:
    """Names of the operations between ``inputs`` and ``output`` that are not
    piecewise linear in the inputs (empty when the map is piecewise linear).

    Batch norm counts as linear only when its statistics are constants (eval
    mode); in training mode it divides by a batch statistic of the input.
    """
    # ids below identify nodes only while the nodes are alive: hold them all
    nodes = list(walk(output.grad_fn))
    input_nodes = {id(t.grad_fn) if t.grad_fn is not None else None for t in inputs}
    leaf_ids = {id(t) for t in inputs}
    depends: dict[int, bool] = {}
    found: set[str] = set()

    def depends_on_inputs(node: Optional[Any]) -> bool:
        if node is None:
            return False
        key = id(node)
        if key in depends:
            return depends[key]
        depends[key] = False  # guards against revisiting while in progress
        variable = getattr(node, "variable", None)
        if variable is not None:
            result = id(variable) in leaf_ids
        else:
            result = key in input_nodes
            for child, _ in node.next_functions:
                result = depends_on_inputs(child) or result
        depends[key] = result
        return result

    def visit(node: Any, seen: set[int]) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            if not depends_on_inputs(current) or id(current) in input_nodes:
                continue
            name = _op_name(current)
            if name in _PRODUCT_OPS:
                factors = [c for c, _ in current.next_functions if depends_on_inputs(c)]
                batch_norm_in_training = bool(getattr(current, "_saved_training", False))
                if len(factors) > 1 or batch_norm_in_training:
                    found.add(name)
            elif not _is_piecewise_linear_op(name):
                found.add(name)
            stack.extend(child for child, _ in current.next_functions)

    if nodes:
        visit(nodes[0], set())
    return sorted(found)


def warn_once_if_not_piecewise_linear(owner: Any, output: Tensor, inputs: Sequence[Tensor]) -> None:
    """Warn, once per ``owner``, that a projection is only a local linearisation."""
    if getattr(owner, "_warned_not_piecewise_linear", False):
        return
    operations = nonlinear_operations(output, inputs)
    if operations:
        owner._warned_not_piecewise_linear = True
        warnings.warn(
            f"{type(owner).__name__}: the network is not piecewise linear between "
            f"the inputs and the layer (operations: {', '.join(operations)}); the "
            "switched linear projection is only a first-order local linearisation "
            "there, not an exact decomposition, and the convergence delta reports "
            "its real error",
            stacklevel=4,
        )
