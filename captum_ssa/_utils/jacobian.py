"""Per-example Jacobians of a layer, a bounded chunk at a time.

A layer with U units over an input of D features (per example) has a U x D
Jacobian per example. We never need it whole: the methods need its rows'
squared norms (||w_i||^2) and products of it with a vector. The rows come
from reverse mode over neuron chunks, the columns from forward mode over
input-feature chunks; the cheaper direction is the one with fewer passes.
Examples are independent in eval mode, so one seed serves the whole batch.
A chunk is sized by the widest tensor it creates on the way between the input
and the layer, measured on a first chunk of one row or column.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from captum_ssa._utils._compat import progress
from captum_ssa._utils.autograd_graph import walk
from captum_ssa._utils.hooks import LayerInOtherThreadError
from captum_ssa._utils.memory_budget import get_memory_budget

# Bound on the number of Jacobian entries alive at once (64 MiB of float32), which
# other modules use to size their own chunks.
DEFAULT_JACOBIAN_ELEMENTS = 2**24

# Default bounds on the widest tensor one chunk of rows or columns creates anywhere
# between the input and the layer, set by measurement on CPU (see the Insens section
# of benchmarks/README.md): fewer, bigger chunks save a fixed ~1 ms each until their
# buffers outgrow the cache. Forward mode's convolutions stay efficient up to larger
# batches than reverse mode's convolution backward does.
FORWARD_CHUNK_BYTES = 2**24
REVERSE_CHUNK_BYTES = 2**22

JACOBIAN_MODES = ("auto", "forward", "reverse")


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


def default_chunk_size(
    batch_size: int, widest_per_example: int, element_size: int = 4, mode: str = "forward"
) -> int:
    """Rows (reverse) or columns (forward) per chunk within the mode's byte budget:
    each row or column of a chunk carries, for every example, one tensor as wide as
    the widest activation between the inputs and the layer. The mode's own cap (larger
    chunks stop paying off) applies within the package's memory budget."""
    mode_cap = FORWARD_CHUNK_BYTES if mode == "forward" else REVERSE_CHUNK_BYTES
    budget = min(mode_cap, get_memory_budget())
    return max(1, budget // max(1, batch_size * widest_per_example * element_size))


class _WidestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns (forward mode's probe)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: Optional[dict[str, Any]] = None,
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, Tensor):
                self.elements = max(self.elements, value.numel())
        return result


class _WidestGradient:
    """Records the largest gradient that reaches any node of ``output``'s graph
    (reverse mode's probe), through hooks removed on exit."""

    def __init__(self, output: Tensor) -> None:
        self.elements = 0
        self._nodes = list(walk(output.grad_fn))

    def _record(self, gradients: tuple[Optional[Tensor], ...]) -> None:
        sizes = (g.numel() for g in gradients if g is not None)
        self.elements = max(self.elements, *sizes, 0)

    def __enter__(self) -> _WidestGradient:
        self._handles = [node.register_prehook(self._record) for node in self._nodes]
        return self

    def __exit__(self, *_: object) -> None:
        for handle in self._handles:
            handle.remove()


def _in_chunks(
    total: int,
    chunk_size: Optional[int],
    mode: str,
    batch_size: int,
    known_width: int,
    element_size: int,
    probe: Union[_WidestTensor, _WidestGradient],
    work: Callable[[int, int], None],
    show_progress: bool,
) -> None:
    """Call ``work(start, stop)`` over ``range(total)`` in chunks. With no
    ``chunk_size``, the first chunk is one row or column, run under ``probe``: the
    widest tensor it creates sizes the other chunks."""
    done = 0
    if chunk_size is None:
        done = 1
        with probe:
            work(0, done)
        widest = -(-max(probe.elements, batch_size * known_width) // batch_size)
        chunk_size = default_chunk_size(batch_size, widest, element_size, mode)
    description = "Jacobian rows" if mode == "reverse" else "Jacobian columns"
    chunks = [(start, min(start + chunk_size, total)) for start in range(done, total, chunk_size)]
    for start, stop in progress(chunks, desc=description, disable=not show_progress):
        work(start, stop)


def _reverse_row_norms(
    layer_output: Tensor,
    inputs: tuple[Tensor, ...],
    chunk_size: Optional[int],
    show_progress: bool,
) -> Tensor:
    batch_size = layer_output.shape[0]
    flat = layer_output.reshape(batch_size, -1)
    num_neurons = flat.shape[1]
    norms = torch.empty(flat.shape, dtype=flat.dtype, device=flat.device)

    def rows(seed: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad(
            flat,
            inputs,
            grad_outputs=seed,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )

    # torch.func.vmap rather than autograd.grad(is_grads_batched=True), whose older
    # vmap runs convolution backward once per row instead of once per chunk.
    batched_rows = torch.func.vmap(rows)

    def row_norms(start: int, stop: int) -> None:
        seeds = _one_hot_rows(start, stop, num_neurons, flat)[:, None, :].expand(
            stop - start, batch_size, num_neurons
        )
        chunk = batched_rows(seeds)
        squared = sum(r.reshape(stop - start, batch_size, -1).square().sum(2) for r in chunk)
        norms[:, start:stop] = torch.as_tensor(squared).T

    known_width = max(num_neurons, _features_per_example(inputs))
    _in_chunks(
        num_neurons,
        chunk_size,
        "reverse",
        batch_size,
        known_width,
        flat.element_size(),
        _WidestGradient(flat),
        row_norms,
        show_progress,
    )
    return norms


def _forward_row_norms(
    layer_output: Tensor,
    layer_function: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    chunk_size: Optional[int],
    show_progress: bool,
) -> Tensor:
    primals = tuple(t.detach() for t in inputs)
    batch_size = primals[0].shape[0]
    sizes = [t[0].numel() for t in primals]
    num_features = sum(sizes)
    norms = torch.zeros(
        batch_size, layer_output[0].numel(), dtype=layer_output.dtype, device=layer_output.device
    )

    def column_block(*tangents: Tensor) -> Tensor:
        return torch.func.jvp(layer_function, primals, tangents)[1]

    def add_column_norms(start: int, stop: int) -> None:
        basis = _one_hot_rows(start, stop, num_features, primals[0])
        tangents = tuple(
            part[:, None, :].expand(stop - start, batch_size, size).reshape(stop - start, *t.shape)
            for part, size, t in zip(basis.split(sizes, dim=1), sizes, primals)
        )
        # Forward mode ignores no_grad; without it the model's parameters would make
        # every chunk record a reverse-mode graph, alive as long as its result.
        with torch.no_grad():
            columns = torch.func.vmap(column_block)(*tangents)
            norms.add_(columns.reshape(stop - start, batch_size, -1).square().sum(0))

    known_width = max(norms.shape[1], num_features)
    _in_chunks(
        num_features,
        chunk_size,
        "forward",
        batch_size,
        known_width,
        norms.element_size(),
        _WidestTensor(),
        add_column_norms,
        show_progress,
    )
    return norms


def jacobian_row_norms(
    layer_output: Tensor,
    layer_function: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    chunk_size: Optional[int] = None,
    mode: str = "auto",
    show_progress: bool = False,
) -> Tensor:
    """Squared norms ``||d v_i / d x||^2`` of every unit of a layer, per example.

    Args:
        layer_output: the layer's output (N, ...) computed from ``inputs`` with
            its autograd graph (used by reverse mode).
        layer_function: ``*inputs -> layer output``, re-evaluated by forward mode
            under ``torch.func.jvp``.
        inputs: leaf tensors that require grad, each (N, ...).
        chunk_size: Jacobian rows (reverse) or columns (forward) per chunk; the
            default keeps the widest tensor a chunk creates between the inputs and
            the layer within ``REVERSE_CHUNK_BYTES`` or ``FORWARD_CHUNK_BYTES``.
        mode: ``"reverse"``, ``"forward"``, or ``"auto"``: the direction with
            fewer passes, and reverse mode where the model has an operation
            without a forward-mode derivative or runs the layer in a worker
            thread (``torch.func.jvp`` does not follow it there).
        show_progress: show a progress bar over the chunks.

    Returns:
        Tensor (N, U) of squared row norms, U = units per example.
    """
    num_neurons = layer_output[0].numel()
    num_features = _features_per_example(inputs)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    chosen = choose_mode(num_neurons, num_features) if mode == "auto" else mode
    if chosen == "forward":
        try:
            return _forward_row_norms(
                layer_output, layer_function, inputs, chunk_size, show_progress
            )
        except LayerInOtherThreadError as error:
            if mode == "forward":
                raise RuntimeError(
                    f"jacobian_mode='forward' cannot be used here: {error}. Use "
                    "jacobian_mode='reverse' or 'auto'."
                ) from error
            # "auto": reverse mode differentiates the graph the worker thread built
        except NotImplementedError as error:
            if "forward AD" not in str(error):
                raise
            if mode == "forward":
                raise NotImplementedError(
                    "jacobian_mode='forward' needs forward-mode derivatives of every "
                    f"operation between the inputs and the layer, but: {error} Use "
                    "jacobian_mode='reverse' or 'auto'."
                ) from error
            # "auto": an operation without a forward-mode derivative (LSTM, CPU
            # flash attention); reverse mode gives the same rows with more passes.
    return _reverse_row_norms(layer_output, inputs, chunk_size, show_progress)


def vector_jacobian_product(
    output: Tensor, inputs: tuple[Tensor, ...], vector: Tensor
) -> tuple[Tensor, ...]:
    """``vector^T d output / d inputs`` per example, zeros for unused inputs."""
    return torch.autograd.grad(
        output,
        inputs,
        grad_outputs=vector,
        retain_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
