"""The shared mask code: checks with clear errors, means over the real tokens, pads
removed and put back, the mask passed to the model, and the warning for a mask given
to the model only. References are loops over examples and positions."""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_ssa import CaptumSSAWarning
from captum_ssa._utils.sequence_mask import (
    checked_mask,
    compacted,
    forward_args_with_mask,
    has_token_axis,
    masked_mean,
    per_token,
    position_weights,
    restored,
    summed_over_examples,
    token_flags,
    warn_if_mask_in_forward_args,
)
from tests.models import padded, sequences


def masks() -> list[torch.Tensor]:
    """The same examples right- and left-padded, and a mask with a hole."""
    examples = sequences()
    return [
        padded(examples)[1],
        padded(examples, 8, left=True)[1],
        torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]]),
    ]


@pytest.mark.parametrize("case", range(3))
def test_pads_removed_keep_each_examples_real_tokens_in_order(case):
    mask = masks()[case]
    values = torch.randn(*mask.shape, 3, dtype=torch.float64)
    compact = compacted(values, mask)
    for row in range(len(mask)):
        real = values[row][mask[row].bool()]  # the real tokens, in order
        length = len(real)
        assert torch.equal(compact[row, :length], real)
        assert torch.equal(compact[row, length:], torch.zeros_like(compact[row, length:]))
    back = restored(compact, mask)
    assert torch.equal(back, values * mask[:, :, None])
    # an integer and a boolean tensor too
    assert torch.equal(compacted(mask.bool(), mask).sum(1), mask.sum(1))


@pytest.mark.parametrize("case", range(3))
def test_means_over_the_real_tokens_equal_a_loop(case):
    mask = masks()[case]
    values = torch.randn(*mask.shape, 2, 3, dtype=torch.float64)
    expected = torch.stack([values[row][mask[row].bool()].mean(0) for row in range(len(mask))])
    torch.testing.assert_close(masked_mean(values, mask), expected, atol=1e-12, rtol=0)
    # the same mean as weights of SSA's flattened positions (token axis first)
    weights = position_weights(mask, (mask.shape[1], 2), torch.float64)
    assert weights.shape == (len(mask), mask.shape[1] * 2)
    torch.testing.assert_close(weights.sum(1), torch.ones(len(mask), dtype=torch.float64))
    moved = values.movedim(3, 1)  # (N, 3 neurons, T, 2)
    weighted = (moved.reshape(len(mask), 3, -1) * weights[:, None, :]).sum(-1)
    torch.testing.assert_close(weighted, expected.mean(1), atol=1e-12, rtol=0)


def test_sums_over_examples_count_positions_among_the_real_tokens():
    mask = masks()[1]  # left padding: position t is each example's t-th real token
    values = torch.randn(*mask.shape, 3, dtype=torch.float64)
    sums, counts = summed_over_examples(values, mask)
    for position in range(mask.shape[1]):
        having = [
            values[row][mask[row].bool()][position]
            for row in range(len(mask))
            if int(mask[row].sum()) > position
        ]
        assert int(counts[position]) == len(having)
        expected = torch.stack(having).sum(0) if having else torch.zeros(3, dtype=torch.float64)
        torch.testing.assert_close(sums[position], expected, atol=1e-12, rtol=0)
    # per_token puts a value per position back at every example's real tokens
    by_position = torch.arange(1.0, mask.shape[1] + 1)[:, None].expand(-1, 3)
    spread = per_token(by_position, mask)
    for row in range(len(mask)):
        real = mask[row].bool()
        assert torch.equal(spread[row][real][:, 0], torch.arange(1.0, int(real.sum()) + 1))
        assert not spread[row][~real].any()


def test_a_mask_applies_to_outputs_with_its_token_axis_only():
    mask = torch.ones(4, 5, dtype=torch.long)
    assert has_token_axis(torch.zeros(4, 5, 3), mask)
    assert has_token_axis(torch.zeros(4, 5, 2, 3), mask)
    assert not has_token_axis(torch.zeros(4, 5), mask)  # no feature axis: logits, say
    assert not has_token_axis(torch.zeros(4, 3), mask)
    assert not has_token_axis(torch.zeros(4, 2, 5, 5), mask)  # attention scores
    assert not has_token_axis(torch.zeros(4, 5, 3), None)
    assert token_flags(torch.zeros(4, 3), mask) is None
    assert token_flags(torch.zeros(4, 5, 3), mask).shape == (4, 5, 1)


def test_the_model_receives_the_mask_first_among_the_additional_arguments():
    mask, extra = torch.ones(2, 3), torch.zeros(2)
    assert forward_args_with_mask(None, (extra,)) == (extra,)
    assert forward_args_with_mask(mask, None)[0] is mask
    arguments = forward_args_with_mask(mask, (extra, 3))
    assert arguments[0] is mask and arguments[1] is extra and arguments[2] == 3
    assert forward_args_with_mask(mask, extra)[1] is extra  # one argument, not a tuple


def test_bad_masks_say_what_was_found():
    ids = torch.randint(0, 5, (3, 4))
    good = torch.ones(3, 4, dtype=torch.long)
    assert checked_mask(good, (ids,)) is not None
    assert checked_mask(good.bool(), (ids,)) is not None
    # an embeddings-level input (N, T, D) has the token axis too
    assert checked_mask(good, (torch.randn(3, 4, 2),)) is not None
    with pytest.raises(TypeError, match="mask must be a tensor shaped"):
        checked_mask([[1, 1, 1, 1]] * 3, (ids,))
    with pytest.raises(ValueError, match=r"got a tensor shaped \(3, 4, 1\)"):
        checked_mask(good[:, :, None], (ids,))
    with pytest.raises(TypeError, match=r"dtype torch\.float32.*additive"):
        checked_mask(good.float(), (ids,))
    with pytest.raises(ValueError, match=r"values other than 0 and 1: \[2\]"):
        checked_mask(good * 2, (ids,))
    with pytest.raises(ValueError, match="2 rows but the inputs hold 3 examples"):
        checked_mask(good[:2], (ids,))
    with pytest.raises(ValueError, match=r"shaped \(3, 5\) but no input is shaped"):
        checked_mask(torch.ones(3, 5, dtype=torch.long), (ids,))
    holes = good.clone()
    holes[1] = 0
    with pytest.raises(ValueError, match=r"no real token \(all 0\) for example\(s\) \[1\]"):
        checked_mask(holes, (ids,))


class Explainer:
    """Stands for an explainer: the warning is once per explainer."""


def test_the_warning_fires_once_for_a_mask_among_the_forward_arguments_and_not_with_mask():
    ids, mask = padded(sequences())
    explainer = Explainer()
    with pytest.warns(CaptumSSAWarning, match="looks like an attention mask.*pass it as mask="):
        warn_if_mask_in_forward_args(explainer, (ids,), (mask,), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_mask_in_forward_args(explainer, (ids,), (mask,), None)  # once
        other = Explainer()
        warn_if_mask_in_forward_args(other, (ids,), (mask,), mask)  # with mask=
        warn_if_mask_in_forward_args(other, (ids,), mask.bool(), mask)
        # token types, random 0/1 features, a mask without pads, float inputs: no warning
        types = torch.zeros_like(ids)
        types[:, 3:] = 1
        types[0, 1] = 1
        warn_if_mask_in_forward_args(other, (ids,), (types,), None)
        random = torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(0))
        warn_if_mask_in_forward_args(other, (ids,), (random,), None)
        warn_if_mask_in_forward_args(other, (ids,), (torch.ones_like(ids),), None)
        warn_if_mask_in_forward_args(other, (ids.double(),), (mask,), None)
    with pytest.warns(CaptumSSAWarning, match=r"additional_forward_args\[1\]"):
        warn_if_mask_in_forward_args(other, (ids,), (random, mask.bool()), None)
