"""The stretch of network between two observed layers, and gradients across it.

Step-wise sensitivity analysis needs, for a pair of layers, the gradient of
every selected upper neuron's activity with respect to the lower layer's
output. The forward pass is run once; each gradient then backpropagates only
through the *segment* between the two layers (``torch.autograd.grad`` executes
just the autograd nodes that lead to the lower output).

When the upper layer is a plain ``nn.Linear`` or ``nn.ConvNd``, the gradient of
one of its neurons with respect to the layer's own *input* does not depend on
the input: a Linear unit's weight row, or for a conv channel's spatial mean the
kernel spread over the input positions (one transposed convolution of a
constant map). The backward pass is then seeded at the layer's input, skipping
the layer's matrix product or convolution, which on wide layers is most of the
cost. This is exact whenever the layer's output is that affine map of the
captured input, which holds for these exact module types whatever lies between
the lower layer and the upper layer's input; the chain rule does the rest.

When, moreover, only element-wise operations (ReLU, eval-mode batch norm,
reshapes, ...) lie between the lower output and the upper layer's input, that
stretch's Jacobian is diagonal: the gradient is the seed times one derivative
per element, and a whole relevance tensor is one batched product. The same
holds through one pooling whose windows do not overlap (kernel equal to
stride, max or average, or a global mean): each lower element reaches only its
window's element, so the gradient is the seed of its window times its own
derivative, and the product is taken at the pooled resolution
(:func:`pooled_derivative`). Elsewhere (overlapping pools, residual sums, ...)
each upper neuron gets its own backward pass, or a chunk of neurons shares one
(``is_grads_batched``) when gradients are small.

The weight-based relevances find the weighted layer between two listed layers
in :mod:`captum_ssa._core.stepwise_sensitivity.weighted_connection`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import Module
from torch.nn.grad import conv1d_input, conv2d_input, conv3d_input

from captum_ssa._utils.autograd_graph import (
    OpKind,
    classify,
    is_node_of,
    op_name,
    walk,
)
from captum_ssa._utils.hooks import neuron_axis, run_and_capture, spatial_mean
from captum_ssa._utils.jacobian import DEFAULT_JACOBIAN_ELEMENTS
from captum_ssa._utils.sequence_mask import has_token_axis, position_weights

# Modules whose output is exactly an affine map of their single input with
# their own weights; subclasses may override ``forward``, so the types are exact.
_CONVOLUTIONS: dict[type, Callable[..., Tensor]] = {
    nn.Conv1d: conv1d_input,
    nn.Conv2d: conv2d_input,
    nn.Conv3d: conv3d_input,
}

# Gradients of at most this many entries (N x K x positions) are computed for
# several upper neurons per backward pass; larger ones one neuron per pass.
VECTORISED_GRADIENT_ELEMENTS = 2**16


def is_weighted_layer(layer: Module) -> bool:
    """Whether ``layer`` is a plain ``nn.Linear`` or ``nn.Conv1d/2d/3d``."""
    return type(layer) is nn.Linear or type(layer) in _CONVOLUTIONS


def layer_position_weights(
    output: Tensor, neuron_dim: Optional[int], mask: Optional[Tensor], layer: str
) -> Optional[Tensor]:
    """The weights ``(N, P)`` of the mean over the positions of ``output`` (a layer's
    output with its neurons moved to dim 1) that leaves a mask's pads out, or None
    where every position counts: without a mask, and for a layer whose own output
    has no token axis where the mask says (see ``sequence_mask.has_token_axis``).

    Raises a ValueError for a layer whose neurons lie along the token axis: its
    pads would be neurons.
    """
    if mask is None:
        return None
    axis = neuron_axis(neuron_dim, output.dim(), layer)
    if not has_token_axis(output.movedim(1, axis), mask):
        return None
    if axis == 1:
        raise ValueError(
            f"layer {layer!r} outputs {tuple(output.shape)}, whose dim 1 is the token axis "
            f"of the mask {tuple(mask.shape)}, and SSA takes dim 1 as its neuron axis: "
            "the pads would be neurons. Pass neuron_dim=-1 to StepwiseSensitivity for the "
            "features of a token sequence (N, T, F)"
        )
    return position_weights(mask, tuple(output.shape[2:]), output.dtype).to(output.device)


def _seeds_at_output(output: Tensor, neurons: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """``d activity_n / d output`` per neuron: (len(neurons), *output.shape), 1/positions
    in channel n of every example (the activity is the spatial mean), or with
    ``weights`` the example's weight of each position."""
    seeds = output.new_zeros(len(neurons), *output.shape)
    value: Any = 1.0 / output[0, 0].numel()
    if weights is not None:
        value = weights.reshape(output.shape[0], *output.shape[2:]).to(output)
    seeds[torch.arange(len(neurons), device=output.device), :, neurons.to(output.device)] = value
    return seeds


def seeds_at_layer_input(
    layer: Module, layer_input: Tensor, layer_output: Tensor, neurons: Tensor
) -> Optional[Tensor]:
    """``d activity_n / d layer_input`` per neuron, or None where it is not fixed.

    Returns a tensor shaped ``(len(neurons), *layer_input.shape[1:])``, the same
    for every example: a Linear unit's weight row, or a conv channel's kernel
    spread over the input positions by one transposed convolution of the map
    that is ``1 / positions`` in that channel.
    """
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor):
        return None
    if type(layer) is nn.Linear and layer_input.dim() == 2:
        return weight.detach()[neurons.to(weight.device)]
    convolution_input = _CONVOLUTIONS.get(type(layer))
    if convolution_input is None:
        return None
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return None  # padding applied outside the convolution: seed at the output instead
    neurons = neurons.to(weight.device)
    spatial = layer_output.shape[2:]
    if layer.groups == 1:
        # every neuron's kernel as one output channel's, all spread by a single
        # transposed convolution of one constant map: the maps of the other
        # channels below would be zeros, which cost as much as the one
        kernels = weight.detach()[neurons]
        spread = convolution_input(
            (1, kernels.shape[0] * kernels.shape[1], *layer_input.shape[2:]),
            kernels.reshape(1, -1, *kernels.shape[2:]),
            torch.full(
                (1, 1, *spatial),
                1.0 / layer_output[0, 0].numel(),
                dtype=weight.dtype,
                device=weight.device,
            ),
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
        )
        return spread.reshape(len(neurons), *layer_input.shape[1:])
    constant_maps = torch.zeros(
        len(neurons), layer_output.shape[1], *spatial, dtype=weight.dtype, device=weight.device
    )
    constant_maps[torch.arange(len(neurons), device=weight.device), neurons] = (
        1.0 / layer_output[0, 0].numel()
    )
    return convolution_input(
        (len(neurons), *layer_input.shape[1:]),
        weight.detach(),
        constant_maps,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
    )


def activity_gradients(
    lower_output: Tensor,
    upper_layer: Module,
    upper_output: Tensor,
    upper_input: Optional[Tensor],
    neurons: Tensor,
    reduce: Callable[[Tensor], Tensor],
    upper_weights: Optional[Tensor] = None,
) -> Tensor:
    """``reduce(d activity_n / d lower_output)`` for every upper neuron ``n``.

    Args:
        lower_output: the lower layer's output (N, K, *P), in the autograd graph.
        upper_layer: the upper layer.
        upper_output: its output (N, C, *Q), computed from ``lower_output``.
        upper_input: its (cloned) input, or None when not observed; used to
            seed the backward pass below the layer when that is exact.
        neurons: indices of upper neurons (along dim 1 of ``upper_output``).
        reduce: maps gradients stacked over some upper neurons (S, N, K, *P) to
            what is kept of them, e.g. the spatial mean of their absolute value
            (S, N, K); applied at once, so the full gradients never pile up.
            It owns the tensor it is given, and may overwrite it.
        upper_weights: the upper layer's position weights under a mask (see
            :func:`layer_position_weights`): its activity is then the mean over
            the valid positions. Default: None (every position).

    Returns:
        The reduced gradients of all ``neurons``: (len(neurons), ...).

    Every backward pass covers all examples at once (they do not interact in
    eval mode) and only the segment between the layers. Small gradients are
    computed for many neurons per pass (``is_grads_batched``), where the cost
    per operation would otherwise dominate; large ones one neuron per pass,
    which was measured faster on CPU: vmap has no batching rule for max-pool's
    backward, loops over the seeds itself and then copies the results together.
    """
    output = upper_output
    seeds_below = None
    # a seed below the layer is the same for every example: not with a mask
    if upper_weights is None and upper_input is not None and upper_input.requires_grad:
        seeds_below = seeds_at_layer_input(upper_layer, upper_input, upper_output, neurons)
    if seeds_below is not None and upper_input is not None:
        output = upper_input
    per_neuron = lower_output.numel()
    chunk = max(1, DEFAULT_JACOBIAN_ELEMENTS // per_neuron)
    if per_neuron > VECTORISED_GRADIENT_ELEMENTS:
        chunk = 1
    # written into one preallocated tensor: small results kept between the large
    # transient gradients would fragment the heap and hold its memory
    reduced: Optional[Tensor] = None
    for start in range(0, len(neurons), chunk):
        part = neurons[start : start + chunk]
        if seeds_below is None:
            seeds = _seeds_at_output(upper_output, part, upper_weights)
        else:
            below = seeds_below[start : start + chunk].to(output.dtype)
            seeds = below[:, None].expand(len(part), *output.shape)
        if chunk == 1:
            (gradient,) = torch.autograd.grad(
                output, lower_output, grad_outputs=seeds[0], retain_graph=True, allow_unused=True
            )
            gradient = None if gradient is None else gradient[None]
        else:
            (gradient,) = torch.autograd.grad(
                output,
                lower_output,
                grad_outputs=seeds,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        if gradient is None:  # the upper layer does not depend on the lower one
            gradient = lower_output.new_zeros(len(part), *lower_output.shape)
        elif gradient.untyped_storage().data_ptr() == seeds.untyped_storage().data_ptr():
            # through views alone autograd hands back the seed itself: reduce may
            # overwrite what it gets, and the seeds may be expanded or reused
            gradient = gradient.clone()
        rows = reduce(gradient)
        del gradient
        if reduced is None:
            reduced = rows.new_empty(len(neurons), *rows.shape[1:])
        reduced[start : start + len(part)] = rows
    if reduced is None:
        return lower_output.new_zeros(0, *lower_output.shape[:2])
    return reduced


def depends_on(upper_output: Tensor, lower_output: Tensor) -> bool:
    """Whether ``upper_output`` was computed from ``lower_output``.

    An iterative walk of the upper output's autograd graph looking for the lower
    output's node: its ``grad_fn``, or for a leaf (an ``Identity`` on the input)
    its gradient accumulator. Gradients between independent tensors are zero,
    which would look like "nothing below is relevant" rather than a mistake.
    A lower output outside autograd cannot be judged, and counts as a yes.
    """
    if not lower_output.requires_grad:
        return True
    is_lower = is_node_of([lower_output])
    return any(is_lower(node) for node in walk(upper_output.grad_fn, stop=is_lower))


def _is_elementwise_path(upper_input: Tensor, lower_output: Tensor) -> bool:
    """Whether the autograd nodes from ``upper_input`` down to ``lower_output`` are
    all element-wise, each with a single input that depends on the network.
    Batch norm in training mode is not element-wise: it mixes the examples."""
    target = lower_output.grad_fn
    node = upper_input.grad_fn
    while node is not None and target is not None:
        if node is target:
            return True
        if not classify(node) & OpKind.ELEMENTWISE:
            return False
        node = _only_computed_input(node)
    return False


def _only_computed_input(node: Any) -> Any:
    """The one autograd node ``node`` reads that is computed (not a parameter or a
    constant), or None where it reads several: the chain forks there."""
    children = [
        child
        for child, _ in node.next_functions
        if child is not None and op_name(child) != "AccumulateGrad"
    ]
    return children[0] if len(children) == 1 else None


def elementwise_derivative(upper_input: Optional[Tensor], lower_output: Tensor) -> Optional[Tensor]:
    """``d upper_input / d lower_output`` where that Jacobian is diagonal, else None.

    On an element-wise path each input element reaches only its own output
    element, so one backward pass of ones gives the whole diagonal, shaped like
    ``lower_output``.
    """
    if upper_input is None or upper_input.numel() != lower_output.numel():
        return None
    if not _is_elementwise_path(upper_input, lower_output):
        return None
    (derivative,) = torch.autograd.grad(
        upper_input, lower_output, torch.ones_like(upper_input), retain_graph=True
    )
    return derivative


# The pooling operations whose windows can be read off their autograd node (by
# ``op_name``): kernel, stride, padding (and dilation) saved on the node.
_WINDOWED_POOLS = frozenset(
    (
        "MaxPool2DWithIndices",
        "MaxPool3DWithIndices",
        "AvgPool2D",
        "AvgPool3D",
    )
)
# Window sums by average pooling; no float16 avg_pool3d on CPU
_SUM_POOLS: dict[int, Callable[..., Tensor]] = {
    2: nn.functional.avg_pool2d,
    3: nn.functional.avg_pool3d,
}
_HALF = (torch.float16, torch.bfloat16)
# Reshapes that keep the elements' order (row-major), so that a flat index
# names the same element on both sides.
_ORDER_KEEPING = frozenset(("Squeeze", "Unsqueeze"))


@dataclass(frozen=True)
class PoolWindows:
    """The windows of one non-overlapping pooling, for a tensor shaped like the
    lower output: :meth:`sum` adds up the values of each window, at the pooled
    resolution. ``shape`` is the pool's input shape ``(N, K, *S)``, ``kernel``
    and ``padding`` per spatial dim, ``output`` the pooled spatial sizes (with
    ``ceil_mode``, a last window may overhang the padded input)."""

    shape: tuple[int, ...]
    kernel: tuple[int, ...]
    padding: tuple[int, ...]
    output: tuple[int, ...]

    def sum(self, values: Tensor) -> Tensor:
        """``values`` shaped like the lower output -> (N, K, Q) sums over each window."""
        values = values.reshape(self.shape)
        pads: list[int] = []
        # F.pad lists the last dim first; a negative pad crops what no window covers
        for size, kernel, padding, output in reversed(
            list(zip(self.shape[2:], self.kernel, self.padding, self.output))
        ):
            pads += [padding, output * kernel - padding - size]
        if any(pads):
            values = nn.functional.pad(values, pads)
        rank = len(self.kernel)
        pool = _SUM_POOLS.get(rank if rank > 1 else 2)
        if pool is not None and not (rank == 3 and values.dtype in _HALF and values.is_cpu):
            # a pool whose windows tile the padded values, dividing by 1: 4x faster
            # than the sums of a reshape, which reduce over strided dims
            tiles = self.kernel if rank > 1 else (1, *self.kernel)
            flat = values if rank > 1 else values.unsqueeze(2)
            summed = pool(flat, tiles, tiles, divisor_override=1)
            return summed.reshape(*self.shape[:2], -1)
        split: list[int] = list(values.shape[:2])
        for output, kernel in zip(self.output, self.kernel):
            split += [output, kernel]
        window_dims = tuple(range(3, len(split), 2))
        return values.reshape(split).sum(window_dims).reshape(*self.shape[:2], -1)


def _int_tuple(value: Any, rank: int) -> Optional[tuple[int, ...]]:
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else ()
    if len(values) == 1:
        values *= rank
    return values if len(values) == rank else None


def _pool_windows(node: Any) -> Optional[PoolWindows]:
    """The windows of a pooling node where they do not overlap (stride equal to
    the kernel, no dilation), else None. Global means over every dim after the
    channels count as one window per channel."""
    name = op_name(node)
    if name == "Mean":
        sizes = getattr(node, "_saved_self_sym_sizes", None)
        dims = getattr(node, "_saved_dim", None)
        if sizes is None or not dims or len(sizes) < 3:
            return None
        rank = len(sizes)
        reduced = {(int(d) - 2**64 if int(d) >= 2**63 else int(d)) % rank for d in dims}
        if reduced != set(range(2, rank)):
            return None
        spatial = tuple(int(s) for s in sizes[2:])
        return PoolWindows(
            tuple(int(s) for s in sizes), spatial, (0,) * len(spatial), (1,) * len(spatial)
        )
    if name not in _WINDOWED_POOLS:
        return None
    pooled = getattr(node, "_saved_self", None)
    if not isinstance(pooled, Tensor) or pooled.dim() < 3:
        return None
    shape = tuple(pooled.shape)
    rank = len(shape) - 2
    kernel = _int_tuple(getattr(node, "_saved_kernel_size", None), rank)
    stride = _int_tuple(getattr(node, "_saved_stride", None), rank) or kernel  # (): the kernel
    padding = _int_tuple(getattr(node, "_saved_padding", (0,)), rank)
    dilation = _int_tuple(getattr(node, "_saved_dilation", (1,)), rank)
    ceil_mode = bool(getattr(node, "_saved_ceil_mode", False))
    if kernel is None or padding is None or stride != kernel or dilation != (1,) * rank:
        return None
    output = []
    for size, k, pad in zip(shape[2:], kernel, padding):
        span = size + 2 * pad - k
        count = (-(-span // k) if ceil_mode else span // k) + 1
        if ceil_mode and (count - 1) * k >= size + pad:
            count -= 1  # as torch: the last window must start inside the input or left pad
        if count < 1:
            return None
        output.append(count)
    return PoolWindows(shape, kernel, padding, tuple(output))


def pooled_derivative(
    upper_input: Optional[Tensor], lower_output: Tensor
) -> Optional[tuple[Tensor, PoolWindows]]:
    """``d upper_input / d lower_output`` through one non-overlapping pool, else None.

    Where only element-wise operations and one pooling with non-overlapping
    windows (max or average; kernel equal to stride, no dilation) lie between
    the lower output and the upper layer's input, every lower element reaches
    at most one input element, the one of its window (max-pooling's argmax
    routing is an element-wise selection, average pooling a fixed weight). One
    backward pass of ones then gives each element's whole derivative, shaped
    like ``lower_output``, and ``d upper_input_q / d lower_p`` is that
    derivative where ``p`` lies in window ``q``, zero elsewhere. Returns it with
    the pool's windows; None for overlapping windows, several pools, channel
    mixing or anything not recognised.
    """
    if upper_input is None or upper_input.grad_fn is None:
        return None
    target = lower_output.grad_fn
    node = upper_input.grad_fn
    windows: Optional[PoolWindows] = None
    while target is not None and node is not target:
        name = op_name(node)
        if name in _WINDOWED_POOLS or name == "Mean":
            if windows is not None:
                return None
            windows = _pool_windows(node)
            if windows is None:
                return None
        elif not (classify(node) & OpKind.ELEMENTWISE or name in _ORDER_KEEPING):
            return None
        node = _only_computed_input(node)
        if node is None:
            return None
    if target is None or windows is None:
        return None
    batch_size, size = lower_output.shape[:2]
    pooled = math.prod(windows.output)
    if (
        windows.shape[:2] != (batch_size, size)
        or math.prod(windows.shape) != lower_output.numel()
        or upper_input.numel() != batch_size * size * pooled
    ):
        return None
    (derivative,) = torch.autograd.grad(
        upper_input, lower_output, torch.ones_like(upper_input), retain_graph=True
    )
    return derivative, windows


def mean_magnitude(
    values: Tensor,
    absolute: bool,
    leading_dims: int = 1,
    weights: Optional[Tensor] = None,
    temporary: bool = False,
) -> Tensor:
    """:func:`spatial_mean` of ``|values|`` (of ``values`` when not ``absolute``).

    With ``temporary`` (``values`` is a scratch tensor nobody else reads) the
    absolute values overwrite it: ``abs_().sum()`` was measured 2-4x faster than
    ``vector_norm(ord=1)``, and a fresh ``abs()`` slower than either on large
    tensors (the new buffer's pages are faulted in afresh).
    """
    if absolute:
        if temporary and values.is_contiguous():
            values = values.abs_()
        elif weights is not None:
            values = values.abs()
        else:
            flat = values.reshape(*values.shape[: leading_dims + 1], -1)
            return torch.linalg.vector_norm(flat, ord=1, dim=-1) / flat.shape[-1]
    return spatial_mean(values, leading_dims, weights)


def mean_gradient_magnitudes(
    lower_output: Tensor,
    upper_layer: Module,
    upper_output: Tensor,
    upper_input: Optional[Tensor],
    neurons: Tensor,
    absolute: bool,
    factor: Optional[Tensor] = None,
    lower_weights: Optional[Tensor] = None,
    upper_weights: Optional[Tensor] = None,
) -> Tensor:
    r"""``mean_p |d a_n / d a_{k,p} * factor_{k,p}|`` for every upper neuron n: (M, N, K).

    ``factor`` (shaped like ``lower_output``, e.g. the activation) is optional;
    without ``absolute`` the signed mean. When the upper layer is seeded below
    (Linear/Conv) and reads the lower output through element-wise operations
    only, the gradient factorises per element into the seed (the same for every
    example) times the path's derivative (one backward pass for all neurons),
    so the whole tensor is one batched product over positions; through one
    non-overlapping pool as well, the seed taken at each element's window and
    the product at the pooled resolution (:func:`pooled_derivative`). Otherwise one
    backward pass per neuron (or per chunk of small ones), as
    :func:`activity_gradients`. ``lower_weights`` and ``upper_weights`` are the
    layers' position weights under a mask (:func:`layer_position_weights`): the
    means are then over the valid positions only.
    """
    seeds = None
    if upper_weights is None and upper_input is not None and upper_input.requires_grad:
        seeds = seeds_at_layer_input(upper_layer, upper_input, upper_output, neurons)
    derivative = None if seeds is None else elementwise_derivative(upper_input, lower_output)
    if seeds is not None and derivative is not None:
        local = derivative if factor is None else derivative * factor
        batch_size, size = lower_output.shape[:2]
        local = local.reshape(batch_size, size, -1)
        per_neuron = seeds.to(local.dtype).reshape(len(neurons), size, -1)
        if absolute:
            local, per_neuron = local.abs(), per_neuron.abs()
        if lower_weights is None:
            return torch.einsum("mkp,nkp->mnk", per_neuron, local) / local.shape[-1]
        return torch.einsum("mkp,nkp,np->mnk", per_neuron, local, lower_weights.to(local))
    pooled = (
        None
        if seeds is None or derivative is not None
        else pooled_derivative(upper_input, lower_output)
    )
    if seeds is not None and pooled is not None:
        # the gradient at lower element p of window q is seed_q * derivative_p:
        # each window's |derivative * factor| summed once, the seeds at pooled size
        derivative, windows = pooled
        # the derivative is a fresh gradient, or its product: overwritten in place
        local = derivative if factor is None else derivative.mul_(factor)
        if absolute:
            local = local.abs_()
        positions = local[0, 0].numel()
        if lower_weights is not None:
            weights = lower_weights.to(local).reshape(local.shape[0], 1, *local.shape[2:])
            local = local * weights
        summed = windows.sum(local)
        per_neuron = seeds.to(summed.dtype).reshape(len(neurons), *summed.shape[1:])
        if absolute:
            per_neuron = per_neuron.abs()
        matrix = torch.einsum("mkq,nkq->mnk", per_neuron, summed)
        return matrix if lower_weights is not None else matrix / positions

    def reduce(gradients: Tensor) -> Tensor:
        return mean_magnitude(
            gradients if factor is None else gradients * factor,
            absolute,
            leading_dims=2,
            weights=lower_weights,
            temporary=True,  # activity_gradients hands over gradients of its own
        )

    return activity_gradients(
        lower_output, upper_layer, upper_output, upper_input, neurons, reduce, upper_weights
    )


def activity_function(
    forward_func: Callable[..., Any],
    layer: Module,
    num_inputs: int,
    neuron_dim: Optional[int] = None,
    masked: bool = False,
) -> Callable[..., Tensor]:
    """``(*inputs, *extra) -> activity of layer's neurons`` (N, C), spatial means.

    The forward function handed to a Captum attribution used between two
    hidden layers: its outputs are the upper layer's neurons (along
    ``neuron_dim``, dim 1 when None), so ``target=n`` picks neuron ``n``.
    With ``masked`` the first of ``extra`` is the mask (as the model receives
    it), and the means are over its valid positions: the mask travels with
    the inputs, so a method that expands the batch (integrated gradients'
    steps) expands it alike.
    """

    def activity(*arguments: Any) -> Tensor:
        inputs, extra = arguments[:num_inputs], arguments[num_inputs:]
        _, (output,) = run_and_capture(
            forward_func,
            tuple(inputs),
            [layer],
            extra or None,
            stop_after_last=True,
            neuron_dim=neuron_dim,
        )
        mask = extra[0] if masked else None
        weights = layer_position_weights(output, neuron_dim, mask, type(layer).__name__)
        return spatial_mean(output, weights=weights)

    return activity
