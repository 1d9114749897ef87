"""Per-example Jacobians of a layer, a bounded chunk at a time.

A layer with U units over an input of D features (per example) has a U x D
Jacobian per example. We never need it whole: the methods need its rows'
squared norms (||w_i||^2) and products of it with a vector. The rows come
from reverse mode over neuron chunks, the columns from forward mode over
input-feature chunks; the cheaper direction is the one with fewer passes.
Examples are independent in eval mode, so one seed serves the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Optional

import torch
from torch import Tensor

from captum_ssa._utils._compat import progress

# Default bound on the number of Jacobian entries alive at once (64 MiB of float32).
DEFAULT_JACOBIAN_ELEMENTS = 2**24


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _features_per_example(inputs: tuple[Tensor, ...]) -> int:
    return sum(t[0].numel() for t in inputs)


def _one_hot_rows(start: int, stop: int, width: int, like: Tensor) -> Tensor:
    """Rows ``start..stop`` of the ``width`` x ``width`` identity, and only those."""
    rows = torch.zeros(stop - start, width, dtype=like.dtype, device=like.device)
    positions = torch.arange(stop - start, device=like.device)
    rows[positions, positions + start] = 1
    return rows


def choose_mode(num_neurons: int, num_features: int) -> str:
    """``"reverse"`` when there are fewer neuron rows than feature columns."""
    return "reverse" if num_neurons <= num_features else "forward"


def default_chunk_size(batch_size: int, num_neurons: int, num_features: int) -> int:
    """Rows (or columns) per chunk so that a chunk holds at most the default budget."""
    mode = choose_mode(num_neurons, num_features)
    other = num_features if mode == "reverse" else num_neurons
    return max(1, DEFAULT_JACOBIAN_ELEMENTS // max(1, batch_size * other))


def _reverse_row_norms(
    layer_output: Tensor,
    inputs: tuple[Tensor, ...],
    chunk_size: int,
    show_progress: bool,
) -> Tensor:
    batch_size = layer_output.shape[0]
    flat = layer_output.reshape(batch_size, -1)
    num_neurons = flat.shape[1]
    norms = torch.zeros_like(flat)
    chunks = list(_chunks(num_neurons, chunk_size))
    for start, stop in progress(chunks, desc="Jacobian rows", disable=not show_progress):
        seeds = _one_hot_rows(start, stop, num_neurons, flat)[:, None, :].expand(stop - start, batch_size, num_neurons)
        rows = torch.autograd.grad(
            flat, inputs, grad_outputs=seeds, is_grads_batched=True,
            retain_graph=True, allow_unused=True, materialize_grads=True,
        )
        squared = sum(r.reshape(stop - start, batch_size, -1).square().sum(2) for r in rows)
        norms[:, start:stop] = torch.as_tensor(squared).T
    return norms


def _forward_row_norms(
    layer_function: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    chunk_size: int,
    show_progress: bool,
) -> Tensor:
    primals = tuple(t.detach() for t in inputs)
    batch_size = primals[0].shape[0]
    sizes = [t[0].numel() for t in primals]
    num_features = sum(sizes)
    norms: Optional[Tensor] = None

    def column_block(*tangents: Tensor) -> Tensor:
        return torch.func.jvp(layer_function, primals, tangents)[1]

    chunks = list(_chunks(num_features, chunk_size))
    for start, stop in progress(chunks, desc="Jacobian columns", disable=not show_progress):
        basis = _one_hot_rows(start, stop, num_features, primals[0])
        tangents = tuple(
            part[:, None, :].expand(stop - start, batch_size, size).reshape(
                stop - start, *t.shape
            )
            for part, size, t in zip(basis.split(sizes, dim=1), sizes, primals)
        )
        columns = torch.func.vmap(column_block)(*tangents)
        block = columns.reshape(stop - start, batch_size, -1).square().sum(0)
        norms = block if norms is None else norms + block
    assert norms is not None
    return norms


def jacobian_row_norms(
    layer_output: Tensor,
    layer_function: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    chunk_size: Optional[int] = None,
    show_progress: bool = False,
) -> Tensor:
    """Squared norms ``||d v_i / d x||^2`` of every unit of a layer, per example.

    Args:
        layer_output: the layer's output (N, ...) computed from ``inputs`` with
            its autograd graph (used by reverse mode).
        layer_function: ``*inputs -> layer output``, re-evaluated by forward mode.
        inputs: leaf tensors that require grad, each (N, ...).
        chunk_size: Jacobian rows (reverse) or columns (forward) per chunk; the
            default keeps a chunk within ``DEFAULT_JACOBIAN_ELEMENTS`` entries.
        show_progress: show a progress bar over the chunks.

    Returns:
        Tensor (N, U) of squared row norms, U = units per example.
    """
    batch_size = layer_output.shape[0]
    num_neurons = layer_output[0].numel()
    num_features = _features_per_example(inputs)
    if chunk_size is None:
        chunk_size = default_chunk_size(batch_size, num_neurons, num_features)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if choose_mode(num_neurons, num_features) == "reverse":
        return _reverse_row_norms(layer_output, inputs, chunk_size, show_progress)
    return _forward_row_norms(layer_function, inputs, chunk_size, show_progress)


def vector_jacobian_product(
    output: Tensor, inputs: tuple[Tensor, ...], vector: Tensor
) -> tuple[Tensor, ...]:
    """``vector^T d output / d inputs`` per example, zeros for unused inputs."""
    return torch.autograd.grad(
        output, inputs, grad_outputs=vector, retain_graph=True,
        allow_unused=True, materialize_grads=True,
    )
