"""Aggregates across the processes of ``torch.distributed``, when there are several.

Every dataset aggregate in the package is a sum (of relevance, of counts, of
examples), so one rank streaming its shard and an all-reduce of the sums gives
exactly the one-process result. Row sets that every rank needs whole (a reference
set) are combined by each rank writing its rows into its own slice of a zeroed
buffer that is then summed, which adds exact zeros and so gives the union exactly,
in rank order. Without an initialised process group (or with one process) these
are no-ops, so single-process code pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether an initialised process group has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it.

    NCCL needs the tensor on the rank's GPU and gloo on the CPU; the sum is taken
    on the device the backend wants and copied back, so callers keep their device.
    """
    if not is_distributed():
        return tensor
    communication_device = _backend_device(tensor)
    buffer = tensor.detach().to(communication_device).contiguous()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    tensor.copy_(buffer.to(tensor.device))
    return tensor


def _backend_device(tensor: Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if tensor.device.type != "cpu" else tensor.device


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 without a process group)."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def same_on_every_rank(values: Sequence[int]) -> bool:
    """Whether every rank holds the same ``values`` (True on one process).

    All-reducing each value and its square tells every rank the same answer:
    ``world * sum(v^2) == sum(v)^2`` exactly when all ranks agree (Cauchy-Schwarz),
    so no rank goes on to a collective that another has left.
    """
    _, world = rank_and_world_size()
    if world == 1:
        return True
    local = torch.tensor(list(values), dtype=torch.float64)
    sums = all_reduce_sum(torch.stack([local, local.square()]))
    return bool((world * sums[1] == sums[0].square()).all())


def rows_on_every_rank(rows: int) -> list[int]:
    """How many rows each rank holds, in rank order (``[rows]`` on one process)."""
    rank, world = rank_and_world_size()
    counts = torch.zeros(world, dtype=torch.int64)
    counts[rank] = rows
    return [int(c) for c in all_reduce_sum(counts)]


def union_over_ranks(rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (same trailing shape and dtype), concatenated in rank
    order, on every rank; ``rows`` itself on one process.

    The result is allocated once and each rank copies its rows into its slice
    before the sum, so the peak is the union plus this rank's own rows.
    """
    if not is_distributed():
        return rows
    rank, _ = rank_and_world_size()
    counts = rows_on_every_rank(len(rows))
    union = rows.new_zeros(sum(counts), *rows.shape[1:])
    start = sum(counts[:rank])
    union[start : start + len(rows)] = rows
    return all_reduce_sum(union)
