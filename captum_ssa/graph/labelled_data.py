"""Reading the data of the graph evaluations: inputs with labels, as tensors or a stream.

Two forms are accepted, as in Captum's metrics and in a training loop:

- tensors: ``inputs`` (a tensor or a tuple of tensors, dimension 0 the batch)
  and ``labels``, one class per input; the inputs need not be floating point
  (token ids, say), since no gradient is taken;
- a stream: ``labels=None`` and ``inputs`` an iterable of ``(inputs, labels)``
  batches, such as a ``DataLoader`` over a ``TensorDataset(x, y)``, read by
  :func:`~captum_ssa._utils.batches.iterate_batches`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import Tensor

from captum_ssa._utils.batches import Batch, is_batch_stream, stream


def labelled_batches(inputs: Any, labels: Optional[Tensor], show_progress: bool) -> Iterator[Batch]:
    """The batches of ``inputs``, each with its 1-D labels (see the module docstring)."""
    if labels is not None or not is_batch_stream(inputs):
        if labels is None:
            raise ValueError(
                "labels is missing: pass labels with tensor inputs, or inputs as an "
                "iterable of (inputs, labels) batches such as a DataLoader"
            )
        # not through iterate_batches, which makes floating-point inputs leaves
        # that require grad: no gradient is taken here
        yield Batch(*check_inputs(inputs, labels))
        return
    for position, batch in enumerate(stream(inputs, "inputs", show_progress)):
        check_no_mask(batch, position)
        if batch.labels is None:
            raise ValueError(
                f"batch {position} of inputs has no labels: with labels=None, inputs must "
                "yield (inputs, labels) pairs, as a DataLoader over TensorDataset(x, y) does"
            )
        yield Batch(batch.inputs, batch.labels.reshape(-1))


def unlabelled_batches(inputs: Any, show_progress: bool) -> Iterator[Batch]:
    """The batches of tensor ``inputs`` (one) or of a stream; labels may be None."""
    if is_batch_stream(inputs):
        for position, batch in enumerate(stream(inputs, "inputs", show_progress)):
            check_no_mask(batch, position)
            yield batch
    else:
        checked, _ = check_inputs(inputs, None)
        yield Batch(checked, None)


def check_no_mask(batch: Batch, position: int) -> None:
    """The graph evaluations run the model without a mask: a batch with one is an error,
    not a mask silently dropped."""
    if batch.mask is not None:
        raise ValueError(
            f"batch {position} of inputs carries a mask, which the graph evaluations do not "
            "pass to the model; give (inputs, labels) batches (a model that needs its mask "
            "can take it among its inputs, as a tuple (ids, mask))"
        )


def check_inputs(inputs: Any, labels: Optional[Tensor]) -> tuple[tuple[Tensor, ...], Tensor]:
    """Inputs as a tuple of detached tensors, labels as a 1-D tensor, sizes checked."""
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, tuple) or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            f"inputs must be a tensor or a tuple of tensors, got {type(inputs).__name__}"
        )
    if not inputs or any(t.dim() == 0 for t in inputs):
        raise ValueError("inputs must be tensors with a batch dimension (dim 0), got a scalar")
    examples = {len(t) for t in inputs}
    if len(examples) != 1 or 0 in examples:
        raise ValueError(
            f"inputs must share one non-zero batch size (dim 0), got {sorted(examples)}"
        )
    if labels is None:
        return tuple(t.detach() for t in inputs), torch.empty(0, dtype=torch.long)
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(inputs[0]):
        raise ValueError(
            f"labels must hold one class per input: expected {len(inputs[0])}, got {len(labels)}"
        )
    return tuple(t.detach() for t in inputs), labels
