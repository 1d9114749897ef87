"""The class-specific graphs of ``StepwiseSensitivity.class_graphs``: its arguments,
and each class's examples of an in-memory batch.

Over a stream every class's graph is built in the same passes
(``build_graphs``); over tensors each class's graph is ``attribute`` on the
examples of that class, which :func:`class_subsets` picks out one class at a
time, so that only one class's copy of the inputs exists at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from captum_ssa._utils.ssa_checks import is_integer


def check_class_arguments(
    attribute_kwargs: dict[str, Any], classes: Optional[Sequence[int]]
) -> Optional[list[Any]]:
    """The classes asked for (None: every class present), after checking that the
    other arguments leave the starting neurons to ``class_graphs``."""
    for reserved in ("target", "top_neurons"):
        if reserved in attribute_kwargs:
            raise TypeError(
                f"class_graphs sets {reserved} itself (each class is its graph's "
                "target); call attribute for other starting neurons"
            )
    wanted = None if classes is None else list(classes)
    for label in wanted or []:
        if not is_integer(label):
            raise TypeError(f"classes must hold ints, got {label!r}")
    return wanted


def check_stream_labels(labels: Any) -> None:
    """A stream's batches carry the labels: separate ones are an error."""
    if labels is not None:
        raise ValueError(
            "over a stream of batches, class_graphs takes the labels from the "
            "(inputs, labels) batches; pass labels=None"
        )


def class_subsets(
    formatted: tuple[Tensor, ...], labels: Any, wanted: Optional[list[Any]]
) -> Iterator[tuple[int, tuple[Tensor, ...]]]:
    """Each wanted class (default: every class present, sorted) with its examples
    of ``formatted``, one class at a time."""
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.is_floating_point() or len(labels) != formatted[0].shape[0]:
        raise ValueError(
            f"labels must hold one integer class per example ({formatted[0].shape[0]}), "
            f"got {len(labels)} values of dtype {labels.dtype}"
        )
    labels = labels.cpu().long()
    if wanted is None:
        wanted = sorted(labels.unique().tolist())
    for label in wanted:
        members = (labels == int(label)).nonzero().flatten()
        if len(members) == 0:
            raise ValueError(f"class {label} has no examples among the labels")
        yield int(label), tuple(t.detach()[members.to(t.device)] for t in formatted)
