"""The one weighted layer that connects two observed layers, and its weights.

The weight-based relevances of step-wise sensitivity analysis rank a lower
neuron by the weights that lead from it to an upper neuron. The two listed
layers may be activation modules (a ReLU, or the pooling after it) rather than
the weighted layers themselves, so the plain ``nn.Linear``/``nn.ConvNd`` between
them has to be found: :func:`record_weighted_calls` notes every weighted
module's call during the forward pass, :func:`connecting_layer` walks the
autograd graph from the upper output down to the lower one to find it, and
:func:`connection_weights` reads its weights as an upper-by-lower matrix.

This is apart from :mod:`captum_ssa._core.stepwise_sensitivity.segment` because it reads weights
and the graph's structure, not gradients.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor, nn
from torch.nn import Module

from captum_ssa._core.stepwise_sensitivity.segment import is_weighted_layer
from captum_ssa._utils.autograd_graph import OpKind, classify, nodes_reaching, op_name
from captum_ssa._utils.hooks import claimed_modules, spatial_mean


@dataclass
class WeightedCall:
    """One call of a plain Linear/Conv module: the autograd nodes of its input and
    output (kept alive, so that a walk meets these very objects) and its input shape."""

    module: Module
    input_node: Any
    output_node: Any
    input_shape: tuple[int, ...]


@contextmanager
def record_weighted_calls(modules: Sequence[Module]) -> Iterator[dict[int, WeightedCall]]:
    """Record every call of the plain Linear/Conv modules among ``modules``.

    Yields a dict, filled during the forward pass, from ``id`` of each call's
    output node to the call. Register it before any hook that replaces a
    layer's output (``run_and_capture``'s clone): hooks run in registration
    order, and the node recorded must be the module's own (a hook of the
    user's registered earlier is then counted as part of the module: the
    weights are the module's either way). Calls from every thread count;
    DataParallel's replicas (copies sharing the hooks) are left out, since
    ``run_and_capture`` refuses them. All of ``modules`` are claimed for the
    block (``hooks.claimed_modules``), so pass every module the forward pass
    will hook. Hooks are removed whatever happens.
    """
    calls: dict[int, WeightedCall] = {}
    weighted = [module for module in dict.fromkeys(modules) if is_weighted_layer(module)]
    hooked = {id(module) for module in weighted}

    def hook(module: Module, args: tuple[Any, ...], output: Any) -> None:
        if id(module) not in hooked or not args or not isinstance(args[0], Tensor):
            return
        if isinstance(output, Tensor) and output.grad_fn is not None:
            node = output.grad_fn
            calls[id(node)] = WeightedCall(module, args[0].grad_fn, node, tuple(args[0].shape))

    with claimed_modules(modules):
        handles = [module.register_forward_hook(hook) for module in weighted]
        try:
            yield calls
        finally:
            for handle in handles:
                handle.remove()


def connecting_layer(
    upper_output: Tensor, lower_output: Tensor, calls: dict[int, WeightedCall]
) -> WeightedCall:
    """The one plain Linear/Conv between two layer outputs, or a ValueError saying why not.

    Walks the autograd graph from ``upper_output`` down to ``lower_output``.
    Every node on the way must keep channels apart (element-wise ops, max/avg
    pooling, reshapes that keep a channel's values together, means over
    positions) except one recorded call of a weighted module (``calls``, from
    :func:`record_weighted_calls`), which the walk steps over to the module's
    input. The path must be a single chain: a node with two inputs that both
    depend on the lower output (a residual sum) mixes neurons the weights do
    not describe. The message names the first node that breaks a rule.
    """
    target = lower_output.grad_fn
    node = upper_output.grad_fn
    if target is None or node is None:
        raise ValueError("the layer outputs are not part of an autograd graph")
    reaching, _alive = nodes_reaching(node, lambda candidate: candidate is target)
    found: Optional[WeightedCall] = None
    while node is not target:
        call = calls.get(id(node))
        if call is not None and call.output_node is node:
            if found is not None:
                raise ValueError(
                    f"two weighted layers ({type(call.module).__name__} and "
                    f"{type(found.module).__name__}) lie between them"
                )
            found, node = call, call.input_node
            if node is None or id(node) not in reaching:
                raise ValueError(
                    f"the {type(call.module).__name__} between them does not read the "
                    "lower layer's output"
                )
            continue
        name = op_name(node)
        if not classify(node) & OpKind.KEEPS_CHANNELS:
            raise ValueError(
                f"an operation that mixes neurons ({name}) lies between them, and is not "
                "a plain nn.Linear/nn.Conv module"
            )
        inputs = [c for c, _ in node.next_functions if c is not None and id(c) in reaching]
        if len(inputs) != 1:
            raise ValueError(
                f"an operation ({name}) combines several paths from the lower layer "
                "(a residual sum, ...)"
            )
        node = inputs[0]
    if found is None:
        raise ValueError("no nn.Linear or nn.Conv1d/2d/3d module lies between them")
    return found


def connection_weights(
    call: WeightedCall, lower_output: Tensor, upper_output: Tensor, absolute: bool
) -> Tensor:
    r"""The connecting layer's weights as a (C, K) matrix between upper and lower neurons.

    Channel ``k`` of the lower output reaches the layer as input channel ``k``
    (a conv) or as the ``F / K`` consecutive input features of a flattened
    channel (a Linear after a flatten, possibly of a pooled map); output
    channel ``n`` of the layer is upper neuron ``n``. The entry is the mean of
    :math:`|W|` over those weights: over the kernel for a conv, over the
    channel's features for a Linear (``absolute=False``: the signed mean).
    A mean rather than a sum keeps conv and Linear weights on one scale; it
    ranks the same, since every channel has as many weights to each upper
    neuron. Raises a ValueError when the channel counts do not line up.
    """
    module = call.module
    weight = getattr(module, "weight").detach()  # noqa: B009 (a Tensor, not a Module)
    lower_neurons, upper_neurons = lower_output.shape[1], upper_output.shape[1]
    if weight.shape[0] != upper_neurons:
        raise ValueError(
            f"its {type(module).__name__} has {weight.shape[0]} outputs for the upper "
            f"layer's {upper_neurons} neurons"
        )
    if type(module) is nn.Linear:
        features = call.input_shape[-1]
        if len(call.input_shape) != 2 or features % lower_neurons:
            raise ValueError(
                f"its Linear reads inputs shaped {call.input_shape}, not (N, features) with "
                f"the lower layer's {lower_neurons} channels flattened into the features"
            )
        blocks = weight.reshape(upper_neurons, lower_neurons, features // lower_neurons)
        return spatial_mean(blocks.abs() if absolute else blocks)
    if call.input_shape[1] != lower_neurons:
        raise ValueError(
            f"its {type(module).__name__} reads {call.input_shape[1]} channels, the lower "
            f"layer has {lower_neurons} neurons"
        )
    groups: int = getattr(module, "groups")  # noqa: B009
    kernels = weight.reshape(*weight.shape[:2], -1)
    per_group = spatial_mean(kernels.abs() if absolute else kernels)
    matrix = weight.new_zeros(weight.shape[0], lower_neurons)
    outputs_per_group = weight.shape[0] // groups
    inputs_per_group = weight.shape[1]
    for group in range(groups):
        rows = slice(group * outputs_per_group, (group + 1) * outputs_per_group)
        columns = slice(group * inputs_per_group, (group + 1) * inputs_per_group)
        matrix[rows, columns] = per_group[rows]
    return matrix
