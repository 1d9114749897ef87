"""One reading of "data": a single batch, or a stream of batches to walk once.

Every method that aggregates over a dataset (SSA, the Insens and LayeredInfluence
fits, the graph evaluations) accepts the same forms, read here:

- a tensor, or a tuple of tensors (the inputs of a multi-input model): one batch;
- any other iterable, such as a ``DataLoader``: a stream of batches, each a tensor
  (the inputs) or a list/tuple whose first element is the inputs (a tensor, or a
  tuple of tensors), whose second element, if present, is the labels (or None),
  which is what a ``DataLoader`` over a ``TensorDataset(x, y)`` yields, and whose
  third, if present, is the batch's mask (``(inputs, labels, mask)``, see
  ``sequence_mask.py``); or a dict as a tokenizer and collator give it, read by
  its keys :data:`INPUT_KEYS` (one of them: the inputs), ``"attention_mask"``
  (the mask) and ``"labels"`` or ``"label"``.

A mask comes with every batch of a stream or with none (``mask=`` of the method
gives the mask of a single batch), and batches of a stream may have different
lengths ``T``. A batch's mask is the model's too: the methods call it as
``forward_func(*inputs, mask, *additional_forward_args)``.

None of them takes a gradient with respect to the inputs, so integer inputs
(token ids) are read as they are; floating-point ones become leaves that
require grad, so that layer outputs are in autograd even for a frozen model.
"""

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from captum_ssa._utils._compat import progress
from captum_ssa._utils.sequence_mask import checked_mask
from captum_ssa._utils.validation import prepare_inputs

# The keys of a dict batch: the inputs (one of these), the mask, the labels.
INPUT_KEYS = ("input_ids", "inputs_embeds")
MASK_KEY = "attention_mask"
LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class Batch:
    """The inputs of one batch (always a tuple), its labels and its mask, if it
    had any."""

    inputs: tuple[Tensor, ...]
    labels: Optional[Tensor]
    mask: Optional[Tensor] = None

    @property
    def size(self) -> int:
        return int(self.inputs[0].shape[0])


def is_batch_stream(data: Any) -> bool:
    """Whether ``data`` is an iterable of batches rather than one batch."""
    return not isinstance(data, (Tensor, tuple)) and isinstance(data, Iterable)


def iterate_batches(
    data: Any, argument: str = "inputs", mask: Optional[Tensor] = None
) -> Iterator[Batch]:
    """Yield the batches of ``data`` (see the module docstring), inputs and masks
    checked; ``mask`` is the mask of a single batch (a tensor or a tuple).

    ``argument`` names the argument in error messages.
    """
    if isinstance(data, (Tensor, tuple)):
        prepared = prepare_inputs(data, integers_allowed=True)
        yield Batch(prepared, None, None if mask is None else checked_mask(mask, prepared))
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(
            f"{argument} must be a tensor, a tuple of tensors or an iterable of batches "
            f"(such as a DataLoader), got {type(data).__name__}"
        )
    if mask is not None:
        raise ValueError(
            f"mask= is the mask of a single batch (a tensor or a tuple of tensors), but "
            f"{argument} is a stream of batches: give each batch its own mask, as "
            f"(inputs, labels, mask) or as a dict with {MASK_KEY!r}"
        )
    masked: Optional[bool] = None
    for position, element in enumerate(data):
        batch = _read_batch(element, argument, position)
        if masked is None:
            masked = batch.mask is not None
        elif masked != (batch.mask is not None):
            raise ValueError(
                f"batch {position} of {argument} {'has no' if masked else 'has a'} mask but "
                f"batch 0 {'has one' if masked else 'has none'}: give a mask with every "
                "batch of a stream (all ones for an unpadded batch) or with none"
            )
        yield batch


class BatchStream:
    """The data of one call, entered once: its batches, checked, for every pass.

    The first batch is read (and checked) on entry, so that a method can run its
    first forward pass before it decides anything else; :meth:`read` then gives
    every batch from the first, once per pass. A single batch is the same batch
    in every pass; a re-iterable stream (a list, a ``DataLoader``) is iterated
    again for each pass after the first; a one-shot iterator can be read once.

    Raises a ValueError for a stream that yields no batch.
    """

    def __init__(self, data: Any, argument: str = "inputs", mask: Optional[Tensor] = None) -> None:
        self.is_stream = is_batch_stream(data)
        self.one_shot = isinstance(data, Iterator)
        # a DataLoader knows its number of batches: progress bars show it
        self.length: Optional[int] = (
            len(data) if self.is_stream and hasattr(data, "__len__") else None
        )
        self._data = data
        self._argument = argument
        self._unread: Optional[Iterator[Batch]] = iterate_batches(data, argument, mask)
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
    if isinstance(element, Mapping):
        element = _dict_batch(element, argument, position)
    if not isinstance(element, (list, tuple)) or not element:
        raise TypeError(
            f"batch {position} of {argument} must be a tensor, a non-empty (inputs, labels) "
            f"or (inputs, labels, mask) list/tuple, or a dict with {INPUT_KEYS[0]!r}, got "
            f"{type(element).__name__}"
        )
    if len(element) > 3:
        raise ValueError(
            f"batch {position} of {argument} has {len(element)} elements; a batch is "
            "(inputs, labels) or (inputs, labels, mask), with the inputs of a multi-input "
            "model as a tuple in the first place"
        )
    inputs = element[0]
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    labels = element[1] if len(element) > 1 else None
    mask = element[2] if len(element) > 2 else None
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
    if mask is not None:
        mask = checked_mask(mask, prepared, f"the mask of batch {position} of {argument}")
    return Batch(prepared, labels, mask)


def _dict_batch(element: Mapping[Any, Any], argument: str, position: int) -> tuple[Any, ...]:
    """A dict batch as ``(inputs, labels, mask)``, or an error naming its keys."""
    inputs = [key for key in INPUT_KEYS if key in element]
    labels = [key for key in LABEL_KEYS if key in element]
    others = sorted(str(key) for key in element if key not in (*INPUT_KEYS, MASK_KEY, *LABEL_KEYS))
    if len(inputs) != 1 or len(labels) > 1 or others:
        found = sorted(str(key) for key in element)
        raise ValueError(
            f"batch {position} of {argument} is a dict with keys {found}; a dict batch "
            f"holds one of {list(INPUT_KEYS)} (the inputs), optionally {MASK_KEY!r} (the "
            f"mask, passed to the model after the inputs) and one of {list(LABEL_KEYS)}, "
            "and nothing else, since nothing else would reach the model. For other model "
            "arguments give (inputs, labels, mask) batches with the inputs as a tuple, or "
            "fixed ones as additional_forward_args"
        )
    return (element[inputs[0]], element[labels[0]] if labels else None, element.get(MASK_KEY))


def stream(
    data: Any,
    argument: str,
    show_progress: bool,
    description: str = "Batches",
    mask: Optional[Tensor] = None,
) -> Iterator[Batch]:
    """:func:`iterate_batches` with an optional progress bar over the batches."""
    return iter(
        progress(iterate_batches(data, argument, mask), desc=description, disable=not show_progress)
    )


def pieces(batch: Batch, rows: Optional[int]) -> Iterator[Batch]:
    """``batch`` cut into pieces of at most ``rows`` examples (whole if None)."""
    step = batch.size if rows is None else rows
    for start in range(0, batch.size, step):
        part = slice(start, start + step)
        labels = None if batch.labels is None else batch.labels[part]
        mask = None if batch.mask is None else batch.mask[part]
        yield Batch(tuple(t[part] for t in batch.inputs), labels, mask)
