"""Walking a dataset once, in pieces, on one process or on each rank of a process group.

The fits (Insens, LayeredInfluence) and the graph evaluations read their data
through :func:`~captum_ssa._utils.batches.iterate_batches` and keep only running
aggregates. Under ``torch.distributed`` every rank streams its own shard, and the
aggregates are combined here: sums with an all-reduce, and row sets (a reference
set that every rank needs whole) by each rank writing its rows into its own slice
of a zeroed buffer that is then summed, which adds exact zeros and so gives the
union exactly, in rank order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from captum_ssa._utils._compat import progress
from captum_ssa._utils.batches import Batch, iterate_batches
from captum_ssa._utils.distributed import all_reduce_sum, is_distributed


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 without a process group)."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def stream(
    data: Any, argument: str, show_progress: bool, description: str = "Batches"
) -> Iterator[Batch]:
    """:func:`iterate_batches` with an optional progress bar over the batches."""
    return iter(
        progress(iterate_batches(data, argument), desc=description, disable=not show_progress)
    )


def pieces(batch: Batch, rows: Optional[int]) -> Iterator[Batch]:
    """``batch`` cut into pieces of at most ``rows`` examples (whole if None)."""
    step = batch.size if rows is None else rows
    for start in range(0, batch.size, step):
        part = slice(start, start + step)
        labels = None if batch.labels is None else batch.labels[part]
        yield Batch(tuple(t[part] for t in batch.inputs), labels)


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
