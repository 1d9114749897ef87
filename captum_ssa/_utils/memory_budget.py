"""One memory budget for every temporary the package allocates.

Chunked computations (SSA's seeds, per-upper-neuron gradients and relevance
chunks; Insens's Jacobian rows; LayeredInfluence's pairwise distances) size their
chunks from this budget unless the user gives an explicit chunk size, so a single
setting bounds the extra peak memory of a call. Where the cost of a chunk depends
on what lies between the layers (the graph a forward pass records), it is
measured on a small chunk with :class:`SavedTensorBytes` and scaled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

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


class SavedTensorBytes:
    """Inside a ``with`` block, the bytes of the tensors autograd saves for the
    backward pass (each storage once): the memory the recorded graph holds, which
    a chunk's layer outputs alone do not show. Also the largest of them.

    The tensors are saved as they are (the hooks only look at them), so the graph
    and its gradients are unchanged. Nested blocks each count what is saved inside
    them (torch applies only the innermost hooks, so one pair serves them all).
    """

    _active: ClassVar[list[SavedTensorBytes]] = []

    def __init__(self) -> None:
        self.total = 0
        self.widest = 0
        self._storages: dict[int, Any] = {}

    @classmethod
    def _pack_for_all(cls, tensor: Tensor) -> Tensor:
        for counter in cls._active:
            counter._pack(tensor)
        return tensor

    def _pack(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        # the storage is kept too: a freed one's address could be reused by another
        if key not in self._storages and storage.nbytes():
            self._storages[key] = storage
            self.total += storage.nbytes()
            self.widest = max(self.widest, storage.nbytes())

    def __enter__(self) -> SavedTensorBytes:
        self._hooks = None
        if not SavedTensorBytes._active:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(
                SavedTensorBytes._pack_for_all, _unpack
            )
            self._hooks.__enter__()
        SavedTensorBytes._active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        SavedTensorBytes._active.remove(self)
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
        self._storages.clear()


def _unpack(tensor: Tensor) -> Tensor:
    return tensor
