"""The autograd graph behind a tensor: one walk, and one table of operations.

Every question the package asks of a graph reads it through here: is a layer a
piecewise-linear function of the inputs (switched linear projections), is the
stretch between two layers element-wise or channel-preserving (step-wise
sensitivity), how wide do gradients get (Jacobian chunks), which activations
DeconvNet's ReLU rule misses. Each autograd node is an operation, named after its
backward without ``Backward`` and trailing digits; :func:`classify` tells what
kind of operation it is, from the name and, for batch norm, from the node's
saved ``training`` flag, whichever backend (CPU, cuDNN, MIOpen) made it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

from torch import Tensor


class OpKind(enum.Flag):
    r"""What an autograd node's operation is, as a set of properties.

    - ``PIECEWISE_LINEAR``: piecewise linear in all its arguments together
      (sums, reshapes, indexing, ReLU, max/avg pooling, ...).
    - ``PRODUCT``: linear in each of its factors alone (``x * w``, ``x @ W``,
      convolution, eval-mode batch norm): piecewise linear in the inputs only
      while at most one factor depends on them (see :func:`product_factors`).
    - ``QUOTIENT``: division, linear in the dividend only: piecewise linear in
      the inputs only while the divisor does not depend on them.
    - ``ELEMENTWISE``: each output element is computed from the element at the
      same place of each argument (up to a reshape or broadcast).
    - ``KEEPS_CHANNELS``: channel ``c`` (dim 1) of the output is computed from
      channel ``c`` of the input only (element-wise operations, pooling, means
      over the dims after the channels, ...).
    - ``BATCH_NORM``: the batch-norm family. In eval mode its statistics are
      constants, and it is a per-channel affine map (``PRODUCT``,
      ``ELEMENTWISE``); in training mode it divides by statistics of the
      batch, which mixes the examples and is not linear.
    - ``ACTIVATION``: an element-wise activation function (ReLU, GELU, SiLU,
      tanh, sigmoid, LeakyReLU, ...), whether a module or a function applied
      it: what DeconvNet's ReLU rule concerns. Exp, log and the arithmetic of
      a composite activation are not.

    An operation with none of the first three properties is not piecewise
    linear (sigmoid, softmax, layer norm, unknown custom functions).
    """

    NONE = 0
    PIECEWISE_LINEAR = enum.auto()
    PRODUCT = enum.auto()
    QUOTIENT = enum.auto()
    ELEMENTWISE = enum.auto()
    KEEPS_CHANNELS = enum.auto()
    BATCH_NORM = enum.auto()
    ACTIVATION = enum.auto()


_LINEAR_ELEMENTWISE = OpKind.PIECEWISE_LINEAR | OpKind.ELEMENTWISE | OpKind.KEEPS_CHANNELS
_ELEMENTWISE = OpKind.ELEMENTWISE | OpKind.KEEPS_CHANNELS  # element-wise, not linear alone
_LINEAR_KEEPS_CHANNELS = OpKind.PIECEWISE_LINEAR | OpKind.KEEPS_CHANNELS

_OPS: dict[str, OpKind] = {
    # reshapes and copies: the element at the same place, up to a reshape
    **dict.fromkeys(
        ("Clone", "View", "UnsafeView", "Reshape", "ReshapeAlias", "Alias", "ToCopy"),
        _LINEAR_ELEMENTWISE,
    ),
    # piecewise-linear element-wise functions and sums; dropout multiplies by a
    # random mask (a Mul node on CPU, NativeDropout on CUDA: both read the same)
    **dict.fromkeys(
        (
            "Add",
            "Sub",
            "Neg",
            "Relu",
            "LeakyRelu",
            "Threshold",
            "Hardtanh",
            "Clamp",
            "ClampMin",
            "ClampMax",
            "Abs",
            "Maximum",
            "Minimum",
            "Where",
            "MaskedFill",
            "NativeDropout",
        ),
        _LINEAR_ELEMENTWISE,
    ),
    # smooth element-wise functions: one derivative per element, not linear
    **dict.fromkeys(
        (
            "Sigmoid",
            "Tanh",
            "Gelu",
            "Silu",
            "Elu",
            "Softplus",
            "Mish",
            "Hardswish",
            "Hardsigmoid",
            "LogSigmoid",
            "Exp",
            "Log",
        ),
        _ELEMENTWISE,
    ),
    # reshapes that keep a channel's values together
    **dict.fromkeys(("Squeeze", "Unsqueeze"), _LINEAR_KEEPS_CHANNELS),
    # linear, but moving values between places (and channels)
    **dict.fromkeys(
        (
            "AccumulateGrad",
            "Sum",
            "Mean",
            "Expand",
            "Permute",
            "Transpose",
            "T",
            "Cat",
            "Stack",
            "Gather",
            "Narrow",
            "Flip",
            "Roll",
            "Repeat",
            "ConstantPadNd",
            "Max",
            "Min",
            "Amax",
            "Amin",
            "AsStrided",
            "Flatten",
            "Cumsum",
        ),
        OpKind.PIECEWISE_LINEAR,
    ),
    # products: linear in each factor alone
    **dict.fromkeys(
        ("Mm", "Bmm", "Mv", "Dot", "Addmm", "Addmv", "Addbmm", "Baddbmm", "Convolution"),
        OpKind.PRODUCT,
    ),
    "Mul": OpKind.PRODUCT | _ELEMENTWISE,
    "Div": OpKind.QUOTIENT | _ELEMENTWISE,
}

# Element-wise activation functions (the flag is added to their kind above):
# ReLU6 and Hardtanh are "Hardtanh" nodes, SELU "Elu", PReLU "Prelu" or
# "PreluKernel", RReLU "RreluWithNoise".
_ACTIVATIONS = frozenset(
    (
        "Relu",
        "LeakyRelu",
        "Threshold",
        "Hardtanh",
        "Sigmoid",
        "Tanh",
        "Gelu",
        "Silu",
        "Elu",
        "Celu",
        "Softplus",
        "Mish",
        "Hardswish",
        "Hardsigmoid",
        "LogSigmoid",
        "Hardshrink",
        "Softshrink",
        "Glu",
        "Prelu",
        "PreluKernel",
        "RreluWithNoise",
    )
)

# Families of operations named by prefix (dimension, variant and mode suffixes).
_FAMILIES: tuple[tuple[str, OpKind], ...] = (
    ("MaxPool", _LINEAR_KEEPS_CHANNELS),
    ("AvgPool", _LINEAR_KEEPS_CHANNELS),
    ("AdaptiveMaxPool", _LINEAR_KEEPS_CHANNELS),
    ("AdaptiveAvgPool", _LINEAR_KEEPS_CHANNELS),
    ("ReflectionPad", OpKind.PIECEWISE_LINEAR),
    ("ReplicationPad", OpKind.PIECEWISE_LINEAR),
    ("Upsample", OpKind.PIECEWISE_LINEAR),
    ("Index", OpKind.PIECEWISE_LINEAR),
    ("Slice", OpKind.PIECEWISE_LINEAR),
    ("Select", OpKind.PIECEWISE_LINEAR),
    ("Split", OpKind.PIECEWISE_LINEAR),
    ("Unbind", OpKind.PIECEWISE_LINEAR),
    ("Copy", OpKind.PIECEWISE_LINEAR),  # CopySlices, CopyBackwards
)

# Products whose factors are not all their arguments: the positions (in
# ``next_functions``) of the factors; the rest are added (a bias).
_FACTOR_POSITIONS = {
    "Addmm": (1, 2),
    "Addmv": (1, 2),
    "Addbmm": (1, 2),
    "Baddbmm": (1, 2),
    "Convolution": (0, 1),
}

# The batch-norm family: each backend and entry point names its own node. True
# or False where the name says whether the batch's statistics are used; None
# where the node's saved ``training`` flag says it.
_BATCH_NORMS: dict[str, Optional[bool]] = {
    "NativeBatchNorm": None,  # CPU, and CUDA's native kernel
    "NativeBatchNormLegit": None,
    "CudnnBatchNorm": None,
    "MiopenBatchNorm": None,
    "NativeBatchNormLegitNoTraining": False,
    "BatchNormNoUpdate": False,
    "BatchNormWithUpdate": True,
}
_BATCH_NORM_FACTORS = (0, 1)  # input and weight; the bias is added


def walk(root: Optional[Any], stop: Optional[Callable[[Any], bool]] = None) -> Iterator[Any]:
    """Every node of the autograd graph below ``root`` (a ``grad_fn``), once each;
    the nodes below a node for which ``stop`` is true are left out.

    Iterative, so deep graphs need no recursion. The nodes seen are kept alive
    until the walk ends: torch may hand out a fresh Python object for a node on
    each access and free it afterwards, and a freed object's ``id`` can be
    reused by the next node, which would then wrongly count as seen.
    """
    seen: dict[int, Any] = {}
    pending = [root]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        yield node
        if stop is None or not stop(node):
            pending.extend(child for child, _ in node.next_functions)


def op_name(node: Any) -> str:
    """The operation of an autograd node: ``"Relu"`` for ``ReluBackward0``,
    ``"AccumulateGrad"`` for ``torch::autograd::AccumulateGrad``."""
    name = node.name().rsplit("::", 1)[-1]
    return name.rstrip("0123456789").removesuffix("Backward")


def uses_batch_statistics(node: Any) -> bool:
    """Whether a batch-norm node normalises by the batch's own statistics
    (training mode). A node whose flag cannot be read counts as training: that
    is never mistaken for an exact linear map."""
    known = _BATCH_NORMS.get(op_name(node))
    if known is not None:
        return known
    return bool(getattr(node, "_saved_training", True))


def classify(node: Any) -> OpKind:
    """The kind of operation of an autograd node (see :class:`OpKind`);
    ``OpKind.NONE`` for an operation the table does not know."""
    name = op_name(node)
    if name in _BATCH_NORMS:
        if uses_batch_statistics(node):
            return OpKind.BATCH_NORM | OpKind.KEEPS_CHANNELS
        return OpKind.BATCH_NORM | OpKind.PRODUCT | _ELEMENTWISE
    kind = _OPS.get(name)
    if kind is None:
        kind = next((k for prefix, k in _FAMILIES if name.startswith(prefix)), OpKind.NONE)
    if name in ("Mean", "Sum") and _reduces_after_channels(node):
        kind |= OpKind.KEEPS_CHANNELS
    if name in _ACTIVATIONS:
        kind |= OpKind.ACTIVATION
    return kind


def _reduces_after_channels(node: Any) -> bool:
    """Whether a sum or mean node reduces only dims after the channels (dim 1)."""
    dims = getattr(node, "_saved_dim", None)
    sizes = getattr(node, "_saved_self_sym_sizes", None)
    if not dims or sizes is None:
        return False  # a reduction over every dim
    rank = len(sizes)
    # dims come back as unsigned 64-bit integers: -1 reads as 2**64 - 1
    reduced = {(d - 2**64 if d >= 2**63 else d) % rank for d in dims}
    return not reduced & {0, 1}


def product_factors(node: Any) -> list[Any]:
    """The children (``next_functions`` nodes, None for a constant) that a
    ``PRODUCT`` node multiplies together."""
    children = [child for child, _ in node.next_functions]
    name = op_name(node)
    positions = _BATCH_NORM_FACTORS if name in _BATCH_NORMS else _FACTOR_POSITIONS.get(name)
    if positions is None:
        return children
    return [children[p] for p in positions if p < len(children)]


def is_piecewise_linear(node: Any, depends_on_inputs: Callable[[Any], bool]) -> bool:
    """Whether ``node``'s operation is piecewise linear in the inputs, given
    which of its children (``next_functions`` nodes) depend on the inputs.

    A product is, while at most one factor depends on them (``x * w``, not
    ``x * x``); a quotient, while its divisor does not (``x / 2``, not
    ``x / x.norm()``); batch norm, in eval mode.
    """
    kind = classify(node)
    if kind & OpKind.PIECEWISE_LINEAR:
        return True
    if kind & OpKind.PRODUCT:
        factors = [f for f in product_factors(node) if f is not None and depends_on_inputs(f)]
        return len(factors) <= 1
    if kind & OpKind.QUOTIENT:
        divisor = node.next_functions[1][0] if len(node.next_functions) > 1 else None
        return divisor is None or not depends_on_inputs(divisor)
    return False


def nodes_reaching(
    root: Optional[Any], is_target: Callable[[Any], bool]
) -> tuple[set[int], list[Any]]:
    """Ids of the nodes below ``root`` (``root`` included) from which a target
    node (``is_target``) can be reached, the targets included: the nodes
    computed from the targets. Also every node walked (not below the targets):
    keep them while using the ids, which identify nodes only while they live.

    One upward pass over parent links, each node once, so linear in the graph.
    """
    nodes = list(walk(root, stop=is_target))
    parents: dict[int, list[Any]] = {}
    for node in nodes:
        for child, _ in node.next_functions:
            if child is not None:
                parents.setdefault(id(child), []).append(node)
    pending = [node for node in nodes if is_target(node)]
    reaching = {id(node) for node in pending}
    while pending:
        for parent in parents.get(id(pending.pop()), []):
            if id(parent) not in reaching:
                reaching.add(id(parent))
                pending.append(parent)
    return reaching, nodes


def is_node_of(tensors: Sequence[Tensor]) -> Callable[[Any], bool]:
    """A test for the node that stands for one of ``tensors`` in a graph: its
    ``grad_fn``, or for a leaf its gradient accumulator. The returned function
    holds the ``grad_fn`` nodes, so their ids stay theirs."""
    held = [t.grad_fn for t in tensors if t.grad_fn is not None]
    node_ids = {id(node) for node in held}
    leaf_ids = {id(t) for t in tensors if t.grad_fn is None}

    def test(node: Any) -> bool:
        # an id alone could be a freed node's, reused by another (torch frees the
        # Python wrappers of nodes); the identity check also keeps ``held`` alive here
        if id(node) in node_ids and any(node is kept for kept in held):
            return True
        variable = getattr(node, "variable", None)
        return variable is not None and id(variable) in leaf_ids

    return test
