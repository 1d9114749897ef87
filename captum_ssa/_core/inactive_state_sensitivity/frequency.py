"""The activation frequencies :math:`m_i / N_{ref}` that ``InactiveStateSensitivity.fit``
counts over a reference, and how ``attribute`` reads them.

:func:`count_active` reads the reference once, keeping a running count per neuron
(with masks, per position among the real tokens, with the samples that have each
position), and sums the counts over the ranks of ``torch.distributed``.
:func:`frequencies` divides them by the reference size, and
:func:`frequency_of_positions` gives every neuron of a layer output its fitted
frequency, a token layer's positions read among the real tokens of a mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.batches import stream
from captum_ssa._utils.distributed import all_reduce_sum, rows_on_every_rank, same_on_every_rank
from captum_ssa._utils.hooks import no_grad_capture
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.sequence_mask import (
    added_along_positions,
    forward_args_with_mask,
    has_token_axis,
    lengths,
    padded_along_positions,
    per_token,
    summed_over_examples,
    warn_if_mask_in_forward_args,
)


class ActiveCounts(NamedTuple):
    """What one fit counted, over every rank's shard."""

    # per layer, on how many reference samples each neuron is active (m_i)
    counts: list[Tensor]
    # per layer, how many reference samples have each position of a token layer
    # fitted with masks (None: every sample has every neuron)
    examples_per_position: list[Optional[Tensor]]
    # N_ref, the number of reference samples
    size: int


def count_active(
    forward: Callable[..., Any],
    layers: list[Module],
    reference: Any,
    additional_forward_args: Any,
    show_progress: bool,
    mask: Optional[Tensor],
    owner: Any,
) -> ActiveCounts:
    """Count on how many samples of ``reference`` each neuron of ``layers`` is
    active, with ``forward`` held untouched; ``owner`` (the explainer) is whom the
    mask-like-argument warning is given once for."""
    counts: Optional[list[Tensor]] = None
    # per layer: the samples that have each position of a token layer (masks), or None
    examples: list[Optional[Tensor]] = []
    size = 0
    with untouched_model(forward):
        for number, batch in enumerate(
            stream(reference, "reference", show_progress, "Reference batches", mask)
        ):
            if number == 0:
                warn_if_mask_in_forward_args(
                    owner, batch.inputs, additional_forward_args, batch.mask
                )
            outputs = no_grad_capture(
                forward,
                batch.inputs,
                layers,
                forward_args_with_mask(batch.mask, additional_forward_args),
            )
            # a running count per neuron: memory does not grow with the data
            summed = [summed_over_examples(output > 0, batch.mask) for output in outputs]
            batch_counts = [count for count, _ in summed]
            batch_examples = [positions for _, positions in summed]
            if counts is None:
                counts, examples = batch_counts, batch_examples
            else:
                _check_same_layer_shapes(
                    counts, batch_counts, batch.inputs, number, examples, batch_examples
                )
                counts = [
                    c + b if e is None else added_along_positions(c, b)
                    for c, b, e in zip(counts, batch_counts, examples)
                ]
                examples = [
                    None if e is None or b is None else added_along_positions(e, b)
                    for e, b in zip(examples, batch_examples)
                ]
            size += batch.size
    return ActiveCounts(*_summed_over_ranks(counts, examples, size, len(layers)))


def frequencies(
    counts: list[Tensor], examples_per_position: Optional[list[Optional[Tensor]]], size: int
) -> list[Tensor]:
    """:math:`m_i / N_{ref}`, with :math:`N_{ref}` per position of a token layer
    fitted with masks: the reference samples that have that position."""
    per_position = examples_per_position or [None] * len(counts)
    return [
        count / size if examples is None else count / examples
        for count, examples in zip(counts, per_position)
    ]


def frequency_of_positions(
    frequency: Tensor, by_position: bool, output: Tensor, mask: Optional[Tensor]
) -> Tensor:
    """The fitted frequency of every neuron of ``output``.

    Position ``t`` of a token layer is the ``t``-th real token: with a mask, each
    real token takes the frequency of its position among the real tokens
    (``(N, T, ...)``, from a fit with or without masks); without one, a layer
    fitted with masks (``by_position``) takes its first ``T`` positions. Else the
    frequency as fitted (checked against the output where Omega's coefficients are
    computed).
    """
    masked = mask is not None and has_token_axis(output, mask)
    if not (by_position or masked) or output.dim() < 3 or frequency.shape[1:] != output.shape[2:]:
        return frequency
    longest = int(lengths(mask).max()) if mask is not None and masked else output.shape[1]
    if longest > frequency.shape[0]:
        raise ValueError(
            f"an example has {longest} tokens but the longest reference sample fit() saw "
            f"had {frequency.shape[0]}: positions beyond it have no frequency. Fit on "
            "reference samples at least as long as the inputs"
        )
    if mask is not None and masked:
        return per_token(frequency, mask)
    return frequency[: output.shape[1]]


def _summed_over_ranks(
    counts: Optional[list[Tensor]], examples: list[Optional[Tensor]], size: int, layers: int
) -> tuple[list[Tensor], list[Optional[Tensor]], int]:
    """The counts, the samples per position of the token layers and the reference
    size over every rank's shard (this rank's alone without ``torch.distributed``),
    or a clear error where there is no data. A token layer's counts cover the
    positions some sample has (the longest sample, over all ranks)."""
    # the same on every rank, so that all ranks raise together rather than some
    # waiting in a collective that the others have left
    shapes = (
        [0] * 3 * layers
        if counts is None
        else [
            x
            for c, e in zip(counts, examples)
            for x in (c[0].numel() if e is not None else c.numel(), c.dim(), int(e is None))
        ]
    )
    if not same_on_every_rank(shapes):
        raise ValueError(
            "the ranks' reference shards give layer outputs of different shapes, or one "
            "rank has no reference batches: every rank needs reference inputs of one shape"
        )
    if counts is None:
        raise ValueError("the reference data is empty: fit needs at least one sample")
    for position, per_position in enumerate(examples):
        if per_position is not None:
            longest = max(rows_on_every_rank(len(per_position)))
            examples[position] = padded_along_positions(per_position, longest)
            counts[position] = padded_along_positions(counts[position], longest)
    for count in [*counts, *(e for e in examples if e is not None)]:
        all_reduce_sum(count)
    for position, per_position in enumerate(examples):
        if per_position is not None:  # positions no sample has: pads in every batch
            seen = int((per_position > 0).sum())
            counts[position] = counts[position][:seen]
            shape = (seen, *([1] * (counts[position].dim() - 1)))
            examples[position] = per_position[:seen].reshape(shape).to(counts[position].device)
    return counts, examples, int(all_reduce_sum(torch.tensor(size)))


def _check_same_layer_shapes(
    counts: list[Tensor],
    batch_counts: list[Tensor],
    batch: tuple[Tensor, ...],
    number: int,
    examples: list[Optional[Tensor]],
    batch_examples: list[Optional[Tensor]],
) -> None:
    """A clear error when a reference batch gives layer outputs of another shape; a
    token layer's (with masks) may differ in length."""
    for seen, new, per_position, batch_per_position in zip(
        counts, batch_counts, examples, batch_examples
    ):
        same = seen.shape == new.shape and batch_per_position is None
        if per_position is not None:
            same = seen.shape[1:] == new.shape[1:] and batch_per_position is not None
        if not same:
            raise ValueError(
                f"reference batch {number} (inputs shaped "
                f"{[tuple(t.shape[1:]) for t in batch]} per example) gives a layer "
                f"output shaped {tuple(new.shape)} per example, but earlier batches "
                f"gave {tuple(seen.shape)}; fit needs reference inputs of one shape "
                "(token sequences of different lengths need masks)"
            )
