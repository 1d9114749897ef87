"""Masks of padded token sequences, shared by every method that reads them.

A *mask* is what a tokenizer returns as ``attention_mask``: a tensor shaped
``(N, T)`` like the token ids, 1 (or True) at a real token and 0 at a pad.
Padded positions are no neurons: they enter no mean over positions, no neuron
set, no count and no distance. What every method shares is here:

- :func:`checked_mask`: the mask checked against the inputs, with errors that
  say what was found;
- :func:`has_token_axis`: which layer outputs a mask applies to: those shaped
  ``(N, T, ...)`` with at least three dimensions whose first two are the
  mask's. A layer without a token axis there (the logits ``(N, C)``, a pooled
  ``(N, F)``, attention scores ``(N, heads, T, T)``) is left as it is;
- :func:`position_weights` and :func:`masked_mean`: means over the valid
  positions only;
- :func:`compacted` and :func:`restored`: the pads removed (each example's real
  tokens moved to the front, in order, zeros after) and put back. Where
  positions of different examples are compared or counted (Insens's
  frequencies, LayeredInfluence's distances), position ``t`` is an example's
  ``t``-th *real* token, so a left-padded and a right-padded example agree;
- :func:`forward_args_with_mask`: the model receives the mask as its first
  additional forward argument, ``forward_func(*inputs, mask, *additional)``;
- :func:`warn_if_mask_in_forward_args`: the warning for a mask given to the
  model only, where the method would count the pads.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from torch import Tensor

from captum_ssa._utils._compat import _format_additional_forward_args
from captum_ssa._utils.warn import warn

MASK_DESCRIPTION = (
    "a tensor shaped (N, T) like the token ids, such as the tokenizer's attention_mask "
    "(1 = real token, 0 = pad)"
)


def checked_mask(mask: Any, inputs: tuple[Tensor, ...], argument: str = "mask") -> Tensor:
    """``mask`` detached, once it is known to be a 0/1 mask of the inputs' tokens.

    The mask must be 2-D ``(N, T)``, bool or integer with values 0 and 1, on
    ``N`` examples like ``inputs``, with ``T`` the length of an input shaped
    ``(N, T, ...)`` (the token ids, or embeddings), and each example needs at
    least one real token. ``argument`` names the mask in the errors. The
    tensor returned is the user's (detached), as the model receives it.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{argument} must be {MASK_DESCRIPTION}, got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(
            f"{argument} must be {MASK_DESCRIPTION}, got a tensor shaped {tuple(mask.shape)}"
        )
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(
            f"{argument} has dtype {mask.dtype}; pass a bool or integer mask of 0 and 1 "
            "(1 = real token), as tokenizers return it. A floating-point mask may be an "
            "additive one (0 and -inf), whose meaning is the opposite"
        )
    mask = mask.detach()
    if mask.dtype != torch.bool:
        values = mask.unique()
        others = values[(values != 0) & (values != 1)]
        if len(others):
            raise ValueError(
                f"{argument} holds values other than 0 and 1: {others[:5].tolist()}; a mask "
                "is 1 at a real token and 0 at a pad"
            )
    examples = inputs[0].shape[0]
    if mask.shape[0] != examples:
        raise ValueError(
            f"{argument} has {mask.shape[0]} rows but the inputs hold {examples} examples; "
            "give one row per example"
        )
    if not any(t.dim() >= 2 and t.shape[:2] == mask.shape for t in inputs):
        shapes = [tuple(t.shape) for t in inputs]
        raise ValueError(
            f"{argument} is shaped {tuple(mask.shape)} but no input is shaped (N, T, ...) "
            f"like it: inputs shaped {shapes[0] if len(shapes) == 1 else shapes}. The mask "
            "has one entry per token of the token ids"
        )
    empty = (~valid(mask)).all(1).nonzero().flatten()
    if len(empty):
        raise ValueError(
            f"{argument} has no real token (all 0) for example(s) {empty[:5].tolist()}; every "
            "example needs at least one real token"
        )
    return mask


def valid(mask: Tensor) -> Tensor:
    """The mask as booleans: True at the real tokens."""
    return mask if mask.dtype == torch.bool else mask != 0


def has_token_axis(output: Tensor, mask: Optional[Tensor]) -> bool:
    """Whether ``mask`` applies to a layer ``output``: one shaped ``(N, T, ...)`` with
    at least three dimensions, whose first two are the mask's ``(N, T)``."""
    return mask is not None and output.dim() >= 3 and output.shape[:2] == mask.shape


def lengths(mask: Tensor) -> Tensor:
    """The number of real tokens of every example, ``(N,)``."""
    return valid(mask).sum(1)


def _trailing(mask: Tensor, like: Tensor) -> Tensor:
    """The boolean mask with ones appended to broadcast over ``like`` ``(N, T, ...)``."""
    flags = valid(mask).to(like.device)
    return flags.reshape(*flags.shape, *([1] * (like.dim() - 2)))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean over the token axis (dim 1) of ``values`` ``(N, T, ...)`` at the real
    tokens only: ``(N, ...)``."""
    flags = _trailing(mask, values)
    total = torch.where(flags, values, torch.zeros((), dtype=values.dtype, device=values.device))
    counts = flags.sum(1).to(values.dtype)
    return total.sum(1) / counts


def position_weights(mask: Tensor, positions: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Weights ``(N, P)`` of a mean over positions shaped ``positions`` (flattened to
    ``P`` entries), whose first axis is the token axis: ``1 / (real tokens * the
    other positions)`` at a real token's positions, 0 at a pad's. Each example's
    weights sum to 1, so a weighted sum is the mean over its valid positions."""
    flags = valid(mask).to(dtype)
    per_token = flags / flags.sum(1, keepdim=True)
    others = 1
    for size in positions[1:]:
        others *= size
    return (per_token[:, :, None] / others).expand(-1, -1, others).reshape(len(mask), -1)


def compacted(values: Tensor, mask: Tensor) -> Tensor:
    """``values`` ``(N, T, ...)`` with the pads removed: each example's real tokens
    first, in their order, zeros after (shaped as before)."""
    flags = valid(mask).to(values.device)
    # a stable sort of "is a pad" puts the real tokens first and keeps their order
    order = (~flags).to(torch.uint8).argsort(dim=1, stable=True)
    gathered = values.gather(1, _spread(order, values))
    counts = flags.sum(1, keepdim=True)
    kept = torch.arange(flags.shape[1], device=flags.device)[None, :] < counts
    return torch.where(
        _trailing(kept, values),
        gathered,
        torch.zeros((), dtype=values.dtype, device=values.device),
    )


def restored(values: Tensor, mask: Tensor) -> Tensor:
    """The inverse of :func:`compacted`: the ``t``-th real token's entry of ``values``
    put back at that token's position, zeros at the pads."""
    flags = valid(mask).to(values.device)
    order = (~flags).to(torch.uint8).argsort(dim=1, stable=True)
    placed = torch.zeros_like(values).scatter(1, _spread(order, values), values)
    return torch.where(
        _trailing(flags, values), placed, torch.zeros((), dtype=values.dtype, device=values.device)
    )


def _spread(order: Tensor, like: Tensor) -> Tensor:
    """An ``(N, T)`` index expanded over the trailing dimensions of ``like``."""
    return order.reshape(*order.shape, *([1] * (like.dim() - 2))).expand_as(like)


def padded_along_positions(tensor: Tensor, length: int) -> Tensor:
    """``tensor`` with zeros appended along dim 0 up to ``length`` entries."""
    missing = length - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(missing, *tensor.shape[1:])])


def added_along_positions(total: Tensor, part: Tensor) -> Tensor:
    """``total + part`` for two running sums over positions (dim 0) of different
    lengths: the shorter counts as zero beyond its end."""
    length = max(total.shape[0], part.shape[0])
    return padded_along_positions(total, length) + padded_along_positions(part, length)


def summed_over_examples(values: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """The sum over examples (dim 0) of ``values`` and, where ``mask`` applies to it
    (:func:`has_token_axis`), of the real tokens only, with the pads removed first
    (position ``t`` is each example's ``t``-th real token), and how many examples
    have a ``t``-th real token, ``(T,)``; None as the count elsewhere (every
    example counts for every entry)."""
    if not has_token_axis(values, mask):
        return values.sum(0), None
    assert mask is not None
    return compacted(values, mask).sum(0), lengths_per_position(mask, values.shape[1])


def lengths_per_position(mask: Tensor, length: int) -> Tensor:
    """How many examples of ``mask`` have a ``t``-th real token, for ``t < length``."""
    counts = lengths(mask).cpu()
    return (torch.arange(length)[None, :] < counts[:, None]).sum(0)


def forward_args_with_mask(mask: Optional[Tensor], additional_forward_args: Any) -> Any:
    """The additional forward arguments the model is called with: the mask first,
    then the user's (``forward_func(*inputs, mask, *additional_forward_args)``), or
    the user's alone without a mask."""
    if mask is None:
        return additional_forward_args
    extra = _format_additional_forward_args(additional_forward_args)
    return (mask, *(extra or ()))


# The explainers warned already: each warns once, without an attribute set on it.
_WARNED: weakref.WeakSet[Any] = weakref.WeakSet()


def warn_if_mask_in_forward_args(
    owner: Any, inputs: tuple[Tensor, ...], additional_forward_args: Any, mask: Optional[Tensor]
) -> None:
    """Warn once per ``owner`` (an explainer) when integer token inputs come with a
    0/1 tensor shaped like them among ``additional_forward_args`` and no mask:
    the model then leaves the pads out, but the method would count them."""
    if mask is not None or owner in _WARNED:
        return
    ids = inputs[0]
    if ids.dim() != 2 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        return
    extra = _format_additional_forward_args(additional_forward_args) or ()
    for position, argument in enumerate(extra):
        if isinstance(argument, Tensor) and _looks_like_a_mask(argument, ids):
            _WARNED.add(owner)
            warn(
                f"additional_forward_args[{position}] looks like an attention mask (0/1, "
                f"shaped {tuple(ids.shape)} like the token ids); if it is, pass it as mask= "
                "instead, so that the padded positions are left out of the explanation "
                "(the mask is then passed to the model as its first additional forward "
                "argument, before the others). Without mask= every position counts, the "
                "pads too."
            )
            return


def _looks_like_a_mask(argument: Tensor, ids: Tensor) -> bool:
    """Whether ``argument`` looks like the attention mask of padded ``ids``: 0/1
    shaped like them, with some pad, and each row's ones one run (right or left
    padding), which random 0/1 features and token types with pads are not."""
    if argument.shape != ids.shape or argument.is_floating_point() or argument.is_complex():
        return False
    if argument.dtype != torch.bool and not bool(((argument == 0) | (argument == 1)).all()):
        return False
    flags = argument.bool()
    counts = flags.sum(1)
    if bool(flags.all()) or bool((counts == 0).any()):
        return False  # no pad to leave out, or an example without a token
    positions = torch.arange(flags.shape[1], device=flags.device).expand_as(flags)
    first = torch.where(flags, positions, flags.shape[1]).min(1).values
    last = torch.where(flags, positions, -1).max(1).values
    return bool((last - first + 1 == counts).all())


def token_flags(output: Tensor, mask: Optional[Tensor]) -> Optional[Tensor]:
    """The mask as booleans broadcast over ``output`` ``(N, T, ...)`` (True at a real
    token's entries), where the mask applies to it; else None."""
    if not has_token_axis(output, mask):
        return None
    assert mask is not None
    return _trailing(mask, output)


def per_token(by_position: Tensor, mask: Tensor) -> Tensor:
    """Values of the ``t``-th real token, ``by_position`` ``(L, ...)``, put at every
    example's real tokens: ``(N, T, ...)``, zeros at the pads. Every example must
    have at most ``L`` real tokens."""
    length = mask.shape[1]
    values = padded_along_positions(by_position[:length], length)
    return restored(values.expand(len(mask), *values.shape), mask)
