"""One reading of "data": a single batch, or a stream of batches to walk once.

Every method that aggregates over a dataset (SSA, the Insens and LayeredInfluence
fits, the graph evaluations) accepts the same forms, read here:

- a tensor, or a tuple of tensors (the inputs of a multi-input model): one batch;
- any other iterable, such as a ``DataLoader``: a stream of batches, each a tensor
  (the inputs) or a list/tuple whose first element is the inputs (a tensor, or a
  tuple of tensors) and whose second element, if present, is the labels, which is
  what a ``DataLoader`` over a ``TensorDataset(x, y)`` yields.

None of them takes a gradient with respect to the inputs, so integer inputs
(token ids) are read as they are; floating-point ones become leaves that
require grad, so that layer outputs are in autograd even for a frozen model.
"""

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from captum_ssa._utils._compat import progress
from captum_ssa._utils.validation import prepare_inputs


@dataclass(frozen=True)
class Batch:
    """The inputs of one batch (always a tuple) and its labels, if it had any."""

    inputs: tuple[Tensor, ...]
    labels: Optional[Tensor]

    @property
    def size(self) -> int:
        return int(self.inputs[0].shape[0])


def is_batch_stream(data: Any) -> bool:
    """Whether ``data`` is an iterable of batches rather than one batch."""
    return not isinstance(data, (Tensor, tuple)) and isinstance(data, Iterable)


def iterate_batches(data: Any, argument: str = "inputs") -> Iterator[Batch]:
    """Yield the batches of ``data`` (see the module docstring), inputs checked.

    ``argument`` names the argument in error messages.
    """
    if isinstance(data, (Tensor, tuple)):
        yield Batch(prepare_inputs(data, integers_allowed=True), None)
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(
            f"{argument} must be a tensor, a tuple of tensors or an iterable of batches "
            f"(such as a DataLoader), got {type(data).__name__}"
        )
    for position, element in enumerate(data):
        yield _read_batch(element, argument, position)


class BatchStream:
    """The data of one call, entered once: its batches, checked, for every pass.

    The first batch is read (and checked) on entry, so that a method can run its
    first forward pass before it decides anything else; :meth:`read` then gives
    every batch from the first, once per pass. A single batch is the same batch
    in every pass; a re-iterable stream (a list, a ``DataLoader``) is iterated
    again for each pass after the first; a one-shot iterator can be read once.

    Raises a ValueError for a stream that yields no batch.
    """

    def __init__(self, data: Any, argument: str = "inputs") -> None:
        self.is_stream = is_batch_stream(data)
        self.one_shot = isinstance(data, Iterator)
        # a DataLoader knows its number of batches: progress bars show it
        self.length: Optional[int] = (
            len(data) if self.is_stream and hasattr(data, "__len__") else None
        )
        self._data = data
        self._argument = argument
        self._unread: Optional[Iterator[Batch]] = iterate_batches(data, argument)
        first = next(self._unread, None)
        if first is None:
            raise ValueError(f"{argument} is an empty stream: it yielded no batch")
        self.first = first

    def read(self) -> Iterator[Batch]:
        """Every batch, from the first (the first read continues the entry's own)."""
        if not self.is_stream:
            return iter([self.first])
        if self._unread is not None:
            unread, self._unread = self._unread, None
            return itertools.chain([self.first], unread)
        if self.one_shot:
            raise ValueError(
                f"{self._argument} is a one-shot iterator and was read already; pass a "
                "list or a DataLoader to read it more than once"
            )
        return iterate_batches(self._data, self._argument)


def _read_batch(element: Any, argument: str, position: int) -> Batch:
    if isinstance(element, Tensor):
        return Batch(prepare_inputs(element, integers_allowed=True), None)
    if not isinstance(element, (list, tuple)) or not element:
        raise TypeError(
            f"batch {position} of {argument} must be a tensor or a non-empty (inputs, labels) "
            f"list/tuple, got {type(element).__name__}"
        )
    inputs = element[0]
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    labels = element[1] if len(element) > 1 else None
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(
            f"the labels of batch {position} of {argument} must be a tensor, "
            f"got {type(labels).__name__}"
        )
    prepared = prepare_inputs(inputs, integers_allowed=True)
    if labels is not None and labels.shape[:1] != prepared[0].shape[:1]:
        raise ValueError(
            f"batch {position} of {argument} has {prepared[0].shape[0]} inputs but "
            f"{labels.shape[0] if labels.dim() else 'scalar'} labels"
        )
    return Batch(prepared, labels)


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
