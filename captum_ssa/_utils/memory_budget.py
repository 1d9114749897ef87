"""One memory budget for every temporary the package allocates.

Chunked computations (SSA's seeds, per-upper-neuron gradients and relevance
chunks; Insens's Jacobian rows; LayeredInfluence's pairwise distances) size their
chunks from this budget unless the user gives an explicit chunk size, so a single
setting bounds the extra peak memory of a call.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20

_budget_bytes = DEFAULT_MEMORY_BUDGET_BYTES


def get_memory_budget() -> int:
    """The current budget for temporaries, in bytes."""
    return _budget_bytes


def set_memory_budget(budget_bytes: Optional[int]) -> None:
    """Set the budget for temporaries in bytes (``None`` restores the default, 256 MiB)."""
    global _budget_bytes
    if budget_bytes is None:
        budget_bytes = DEFAULT_MEMORY_BUDGET_BYTES
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 1:
        raise ValueError(
            f"the memory budget must be a positive number of bytes, got {budget_bytes!r}"
        )
    _budget_bytes = budget_bytes


@contextmanager
def memory_budget(budget_bytes: int) -> Iterator[None]:
    """Use ``budget_bytes`` as the budget inside a ``with`` block."""
    previous = get_memory_budget()
    set_memory_budget(budget_bytes)
    try:
        yield
    finally:
        set_memory_budget(previous)


def rows_within_budget(bytes_per_row: int, budget_bytes: Optional[int] = None) -> int:
    """How many rows of ``bytes_per_row`` bytes fit in the budget (at least one)."""
    budget = get_memory_budget() if budget_bytes is None else budget_bytes
    return max(1, budget // max(1, bytes_per_row))
