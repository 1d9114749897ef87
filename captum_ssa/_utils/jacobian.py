"""Per-example Jacobians of a layer, a bounded chunk at a time.

A layer with U units over an input of D features (per example) has a U x D
Jacobian per example. We never need it whole: the methods need its rows'
squared norms (||w_i||^2) and products of it with a vector. The rows come
from reverse mode over neuron chunks, the columns from forward mode over
input-feature chunks, or from one plain backward pass per neuron (the loop a
user would write, faster where ``vmap``'s batched backward is slow). Which is
fastest depends on the model, so ``"auto"`` times a chunk of each and lets the
fastest finish (a caller may keep the choice for later calls of the same shapes).
Examples are independent in eval mode, so one seed serves the whole batch.
A chunk is sized by the widest tensor it creates on the way between the input
and the layer, measured on a probe of one row or column, which is then computed
again in the first chunk: every call of a strategy, timed or not, computes the
same chunks and so gives the same bits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
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

# Default bounds on a chunk of rows or columns, set by measurement on CPU (the chunk
# sweep in benchmarks/README.md): fewer, bigger chunks save a fixed ~1 ms each, which
# stops paying beyond 64-128 rows or columns of one example on 2CONV, ResNet and VGG
# layers in both modes (and reverse mode's convolution backward slows down beyond
# ~100-200 example-rows per call), and the widest tensor a chunk creates anywhere
# between the input and the layer stays within CHUNK_BYTES (a byte bound alone gave
# 1024 columns on a small ResNet's first stage, 2x slower than 128).
CHUNK_EXAMPLE_VECTORS = 128
CHUNK_BYTES = 2**24

JACOBIAN_MODES = ("auto", "forward", "reverse", "loop")


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


def default_chunk_size(batch_size: int, widest_per_example: int, element_size: int = 4) -> int:
    """Rows (reverse) or columns (forward) per chunk: ``CHUNK_EXAMPLE_VECTORS`` over the
    batch, and within ``CHUNK_BYTES`` and the package's memory budget, where each row
    or column of a chunk carries, for every example, one tensor as wide as the widest
    activation between the inputs and the layer."""
    budget = min(CHUNK_BYTES, get_memory_budget())
    within_budget = budget // max(1, batch_size * widest_per_example * element_size)
    return max(1, min(CHUNK_EXAMPLE_VECTORS // batch_size, within_budget))


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


class _RowNorms:
    """One way of computing the squared row norms of a layer's Jacobian, a chunk of
    ``total`` rows or columns at a time, resumable: :meth:`advance` goes on from
    where the last call stopped, so the chunks timed to choose a strategy count."""

    mode = ""
    total = 0

    def __init__(self, batch_size: int, known_width: int, element_size: int) -> None:
        self.done = 0
        self._batch_size = batch_size
        self._known_width = known_width
        self._element_size = element_size

    def _work(self, start: int, stop: int) -> None:
        raise NotImplementedError

    def _probe(self) -> Union[_WidestTensor, _WidestGradient]:
        raise NotImplementedError

    @property
    def _probe_elements(self) -> int:
        raise NotImplementedError

    def result(self) -> Tensor:
        raise NotImplementedError

    def advance(self, stop: int) -> None:
        """Compute rows or columns ``done..stop``."""
        self._work(self.done, stop)
        self.done = stop

    def restart(self) -> None:
        """Forget what was computed: the next chunk starts at row or column 0."""
        self.done = 0
        self.result().zero_()

    def first_chunk(self) -> int:
        """Compute the first row or column under the probe, restart, and return the
        chunk size the widest tensor it created allows within the budget. Restarting
        puts the chunks at the same boundaries as a call with that chunk size given:
        a row of reverse mode could round differently in a chunk of another size, and
        forward mode sums each row's norm over its column chunks."""
        with self._probe():
            self.advance(1)
        self.restart()
        batch = self._batch_size
        widest = -(-max(self._probe_elements, batch * self._known_width) // batch)
        return default_chunk_size(batch, widest, self._element_size)

    def finish(self, chunk_size: int, show_progress: bool) -> Tensor:
        """Compute the rest, ``chunk_size`` at a time, and return the norms."""
        description = "Jacobian rows" if self.mode != "forward" else "Jacobian columns"
        stops = list(range(self.done + chunk_size, self.total, chunk_size))
        if self.done < self.total:
            stops.append(self.total)
        for stop in progress(stops, desc=description, disable=not show_progress):
            self.advance(stop)
        return self.result()


class _ReverseRowNorms(_RowNorms):
    """Rows from reverse mode, a chunk of one-hot seeds per ``vmap``ped backward pass."""

    mode = "reverse"

    def __init__(self, layer_output: Tensor, inputs: tuple[Tensor, ...]) -> None:
        batch_size = layer_output.shape[0]
        self._flat = layer_output.reshape(batch_size, -1)
        self.total = self._flat.shape[1]
        super().__init__(
            batch_size, max(self.total, _features_per_example(inputs)), self._flat.element_size()
        )
        self._inputs = inputs
        self._norms = torch.empty_like(self._flat)
        # torch.func.vmap rather than autograd.grad(is_grads_batched=True), whose older
        # vmap runs convolution backward once per row instead of once per chunk.
        self._batched_rows = torch.func.vmap(self._rows)
        self._gradient_probe: Optional[_WidestGradient] = None

    def _rows(self, seed: Tensor) -> tuple[Tensor, ...]:
        return torch.autograd.grad(
            self._flat,
            self._inputs,
            grad_outputs=seed,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )

    def _probe(self) -> _WidestGradient:
        # made when needed: it walks the whole graph, which the loop never asks for
        if self._gradient_probe is None:
            self._gradient_probe = _WidestGradient(self._flat)
        return self._gradient_probe

    @property
    def _probe_elements(self) -> int:
        return self._probe().elements

    def _work(self, start: int, stop: int) -> None:
        batch_size, num_neurons = self._flat.shape
        seeds = _one_hot_rows(start, stop, num_neurons, self._flat)[:, None, :].expand(
            stop - start, batch_size, num_neurons
        )
        chunk = self._batched_rows(seeds)
        squared = sum(r.reshape(stop - start, batch_size, -1).square().sum(2) for r in chunk)
        self._norms[:, start:stop] = torch.as_tensor(squared).T

    def result(self) -> Tensor:
        return self._norms


class _LoopRowNorms(_ReverseRowNorms):
    """Rows from reverse mode, one plain backward pass per neuron (for the whole
    batch: examples are independent), as a user's loop would: no ``vmap``, whose
    batching rules some models' backward passes lack or run slower than a loop."""

    mode = "loop"

    def first_chunk(self) -> int:
        self.advance(1)
        return 1

    def _work(self, start: int, stop: int) -> None:
        seed = torch.zeros_like(self._flat)
        for neuron in range(start, stop):
            seed[:, neuron] = 1
            rows = self._rows(seed)
            seed[:, neuron] = 0
            squared = sum(r.reshape(len(seed), -1).square().sum(1) for r in rows)
            self._norms[:, neuron] = torch.as_tensor(squared)


class _ForwardRowNorms(_RowNorms):
    """Columns from forward mode (``torch.func.jvp``), a chunk of one-hot tangents per
    ``vmap``ped pass; each column chunk adds its squares to every row's norm."""

    mode = "forward"

    def __init__(
        self,
        layer_output: Tensor,
        layer_function: Callable[..., Tensor],
        inputs: tuple[Tensor, ...],
    ) -> None:
        self._primals = tuple(t.detach() for t in inputs)
        batch_size = self._primals[0].shape[0]
        self._sizes = [t[0].numel() for t in self._primals]
        self.total = sum(self._sizes)
        self._norms = torch.zeros(
            batch_size,
            layer_output[0].numel(),
            dtype=layer_output.dtype,
            device=layer_output.device,
        )
        super().__init__(
            batch_size, max(self._norms.shape[1], self.total), self._norms.element_size()
        )
        self._layer_function = layer_function
        self._tensor_probe = _WidestTensor()

    def _probe(self) -> _WidestTensor:
        return self._tensor_probe

    @property
    def _probe_elements(self) -> int:
        return self._tensor_probe.elements

    def _column_block(self, *tangents: Tensor) -> Tensor:
        return torch.func.jvp(self._layer_function, self._primals, tangents)[1]

    def _work(self, start: int, stop: int) -> None:
        batch_size = self._norms.shape[0]
        basis = _one_hot_rows(start, stop, self.total, self._primals[0])
        tangents = tuple(
            part[:, None, :].expand(stop - start, batch_size, size).reshape(stop - start, *t.shape)
            for part, size, t in zip(basis.split(self._sizes, dim=1), self._sizes, self._primals)
        )
        # Forward mode ignores no_grad; without it the model's parameters would make
        # every chunk record a reverse-mode graph, alive as long as its result.
        with torch.no_grad():
            columns = torch.func.vmap(self._column_block)(*tangents)
            self._norms.add_(columns.reshape(stop - start, batch_size, -1).square().sum(0))

    def result(self) -> Tensor:
        return self._norms


@dataclass(frozen=True)
class JacobianPlan:
    """The strategy a measurement chose for one layer and input shape, and its
    chunk size: what a later call with the same shapes reuses."""

    mode: str
    chunk_size: int


# Rows of the per-neuron loop timed for its estimate: one is too noisy to compare with
# a whole chunk of the other strategies, and a handful runs faster than the long loop
# does (0.3 against 0.6 ms a row on a ResNet's first stage), so at least
# 1 / LOOP_PART_TIMED of the rows are timed.
LOOP_ROWS_TIMED = 4
LOOP_PART_TIMED = 32

# Each strategy measured after the first is scouted on 1 / SCOUT_PART of what it would be
# timed on, and left out where that part, scaled up to the whole job, takes more than
# SCOUT_MARGIN times the best estimate so far and, scaled up to the part, more than the
# best estimate itself. A smaller chunk costs more per row or column than a whole one
# (up to 3x at 1/8 in the chunk sweep of benchmarks/README.md), so the margin keeps the close
# ones; a part cheaper than the best job is timed anyway, so that a noisy scout of a
# millisecond cannot leave out a strategy where timing it costs little. Forward mode
# over a narrow late layer (7-12x reverse mode's time on ResNet and VGG) then costs a
# scout instead of a chunk.
SCOUT_PART = 8
SCOUT_MARGIN = 4.0

# Estimates within this fraction of the smallest are a tie, which goes to the first
# measured (the cost model's favourite, then the other vectorised mode, then the loop),
# so that timing noise does not flip a near tie between explainers or runs.
TIE_MARGIN = 0.1


def _work_clock() -> float:
    """On one torch thread the calling thread's CPU time, which other processes'
    load leaves alone (a wall clock under load times a few rows of the loop between
    preemptions and a longer chunk across them: the loop looked 2-3x faster than it
    ran); on several threads the wall clock, which sees their parallel speed-up."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def timed_advance(strategy: _RowNorms, count: int) -> float:
    """Compute the next ``count`` rows or columns of ``strategy`` and return how long
    that took (tests replace this function to inject timings)."""
    started = _work_clock()
    strategy.advance(strategy.done + count)
    return _work_clock() - started


def fastest(estimates: dict[str, float]) -> str:
    """The first strategy measured (the insertion order) whose estimated time is
    within ``TIE_MARGIN`` of the smallest, so that the choice depends only on the
    times and a near tie goes to the cost model's favourite."""
    smallest = min(estimates.values())
    return next(mode for mode, t in estimates.items() if t <= smallest * (1 + TIE_MARGIN))


def estimated_time(elapsed: float, timed: int, chunk_size: int, total: int) -> float:
    """The time of a whole job of ``total`` rows or columns, done ``chunk_size`` at a
    time, from ``elapsed`` seconds for ``timed`` of them."""
    per_chunk = elapsed * min(chunk_size, total) / max(1, timed)
    return per_chunk * -(-total // chunk_size)


def _measured(
    candidates: list[Callable[[], _RowNorms]],
    chunk_size: Optional[int],
    allow_failure: bool,
) -> tuple[_RowNorms, int]:
    """Time a chunk of each candidate strategy and return the fastest, resumed where
    it stopped, with its chunk size.

    Each is warmed up on one row or column (the probe that sizes its chunks, or with
    ``chunk_size`` given a plain one), restarted, and timed on its first two chunks
    (the whole job where one chunk does it), so that the chunks timed are the ones
    every later call computes; the loop on at least ``LOOP_ROWS_TIMED`` rows. Each one
    after the first is scouted first (see ``SCOUT_PART``) and left out if hopeless. With
    ``allow_failure`` one that raises (no forward-mode derivative, a layer in a worker
    thread) is left out.
    """
    estimates: dict[str, float] = {}
    measured: dict[str, tuple[_RowNorms, int]] = {}
    for make in candidates:
        try:
            strategy = make()
            if chunk_size is None or strategy.mode == "loop":
                size = strategy.first_chunk()
            else:
                size = chunk_size
                strategy.advance(1)
                strategy.restart()
            if strategy.done >= strategy.total:  # the loop over a single row
                return strategy, size
            rows = size
            if strategy.mode == "loop":
                rows = max(LOOP_ROWS_TIMED, strategy.total // LOOP_PART_TIMED)
            timed = min(rows, strategy.total - strategy.done)
            if estimates:
                best = min(estimates.values())
                scout = max(1, timed // SCOUT_PART)
                per_item = timed_advance(strategy, scout) / scout
                job = per_item * strategy.total
                if SCOUT_MARGIN * best < job < SCOUT_MARGIN**2 * best:
                    # a second reading before leaving it out, unless far out: a scout of
                    # a millisecond read 5x slow on the loaded machine
                    strategy.restart()
                    per_item = min(per_item, timed_advance(strategy, scout) / scout)
                if per_item * strategy.total > SCOUT_MARGIN * best and per_item * timed > best:
                    continue
                strategy.restart()
                timed = min(rows, strategy.total)
            estimate = estimated_time(timed_advance(strategy, timed), timed, size, strategy.total)
            second = min(size, strategy.total - strategy.done)
            if strategy.mode != "loop" and second > 0:
                # the faster of two chunks: the first one at full size can pay for
                # memory touched for the first time, and one reading can be noisy
                elapsed = timed_advance(strategy, second)
                estimate = min(estimate, estimated_time(elapsed, second, size, strategy.total))
        except (LayerInOtherThreadError, NotImplementedError) as error:
            # LayerInOtherThreadError is a NotImplementedError too: test it first
            no_forward_derivative = "forward AD" in str(error)
            if not allow_failure or not (
                isinstance(error, LayerInOtherThreadError) or no_forward_derivative
            ):
                raise
            continue
        estimates[strategy.mode] = estimate
        measured[strategy.mode] = (strategy, size)
    return measured[fastest(estimates)]


def jacobian_row_norms(
    layer_output: Tensor,
    layer_function: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    chunk_size: Optional[int] = None,
    mode: str = "auto",
    show_progress: bool = False,
    plans: Optional[dict[Hashable, JacobianPlan]] = None,
    plan_key: Hashable = None,
) -> Tensor:
    """Squared norms ``||d v_i / d x||^2`` of every unit of a layer, per example.

    Args:
        layer_output: the layer's output (N, ...) computed from ``inputs`` with
            its autograd graph (used by reverse mode and the loop).
        layer_function: ``*inputs -> layer output``, re-evaluated by forward mode
            under ``torch.func.jvp``.
        inputs: leaf tensors that require grad, each (N, ...).
        chunk_size: Jacobian rows (reverse) or columns (forward) per chunk; the
            default keeps the widest tensor a chunk creates between the inputs and
            the layer within ``CHUNK_BYTES``, and at most
            ``CHUNK_EXAMPLE_VECTORS`` rows or columns of one example.
        mode: ``"reverse"``, ``"forward"``, ``"loop"`` (one backward pass per
            neuron), or ``"auto"``: each of them timed on one chunk (a hopeless
            one only on a part of it), and the fastest finishes the job (the
            chunks measured count towards it).
            Forward mode is left out where the model has an operation without a
            forward-mode derivative or runs the layer in a worker thread
            (``torch.func.jvp`` does not follow it there).
        show_progress: show a progress bar over the chunks.
        plans: where ``"auto"`` keeps its choice, under ``plan_key`` and the
            shapes, dtype and device: a later call that finds one there uses it
            without measuring (the caller, e.g. an explainer, owns the dict).
        plan_key: what, besides the shapes, tells the calls apart (e.g. which
            layer).

    Returns:
        Tensor (N, U) of squared row norms, U = units per example. Every mode
        gives the same norms up to rounding.
    """
    num_neurons = layer_output[0].numel()
    num_features = _features_per_example(inputs)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    makers: dict[str, Callable[[], _RowNorms]] = {
        "forward": lambda: _ForwardRowNorms(layer_output, layer_function, inputs),
        "reverse": lambda: _ReverseRowNorms(layer_output, inputs),
        "loop": lambda: _LoopRowNorms(layer_output, inputs),
    }
    if mode != "auto":
        try:
            strategy = makers[mode]()
            size = chunk_size or strategy.first_chunk()
            return strategy.finish(1 if mode == "loop" else size, show_progress)
        except LayerInOtherThreadError as error:
            raise RuntimeError(
                f"jacobian_mode='forward' cannot be used here: {error}. Use "
                "jacobian_mode='reverse' or 'auto'."
            ) from error
        except NotImplementedError as error:
            if mode != "forward" or "forward AD" not in str(error):
                raise
            raise NotImplementedError(
                "jacobian_mode='forward' needs forward-mode derivatives of every "
                f"operation between the inputs and the layer, but: {error} Use "
                "jacobian_mode='reverse' or 'auto'."
            ) from error
    key = (
        plan_key,
        chunk_size,
        tuple(layer_output.shape),
        tuple(tuple(t.shape) for t in inputs),
        layer_output.dtype,
        layer_output.device,
    )
    plan = None if plans is None else plans.get(key)
    if plan is not None:
        return makers[plan.mode]().finish(plan.chunk_size, show_progress)
    # the cost model's favourite first: the others are scouted against it, and it wins
    # near ties
    first = choose_mode(num_neurons, num_features)
    order = [first, "reverse" if first == "forward" else "forward", "loop"]
    strategy, size = _measured([makers[m] for m in order], chunk_size, allow_failure=True)
    if plans is not None:
        plans[key] = JacobianPlan(strategy.mode, size)
    # the chunks measured are the plan's: this call gives the bits later calls give
    return strategy.finish(size, show_progress)


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
