"""InactiveStateSensitivity with masks: the neurons of a token layer are the (position,
feature) pairs of the real tokens, position t being an example's t-th real token, so
padded examples with their mask give the results of the unpadded ones.
References: the unpadded examples, and plain loops over examples and neurons."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from captum_ssa import CaptumSSAWarning, InactiveStateSensitivity
from tests.models import MaskedTransformer, masked_transformer, padded, sequences

TOLERANCE = {"atol": 1e-9, "rtol": 0}  # float64: equal up to rounding (the spec asks 1e-6)


def layer_output(model: MaskedTransformer, layer: nn.Module, embeddings: Tensor) -> Tensor:
    """``layer``'s output for one unpadded example, from its embeddings."""
    kept: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        model.from_embeddings(embeddings)
    finally:
        handle.remove()
    return kept[0][0]


def plain_frequency(model: MaskedTransformer, layer: nn.Module, reference: list[Tensor]):
    """How often each neuron is on, per position among the samples that have it (a
    token layer), or over every sample (the logits)."""
    with torch.no_grad():
        outputs = [layer_output(model, layer, model.embedding(e)) for e in reference]
    if outputs[0].dim() == 1:
        return torch.stack([(o > 0).double() for o in outputs]).mean(0)
    longest = max(len(o) for o in outputs)
    frequency = torch.zeros(longest, outputs[0].shape[1], dtype=torch.float64)
    for position in range(longest):
        having = [o[position] > 0 for o in outputs if len(o) > position]
        frequency[position] = torch.stack(having).double().mean(0)
    return frequency


def plain_omega(
    model: MaskedTransformer, layer: nn.Module, example: Tensor, frequency: Tensor
) -> Tensor:
    """Eq. 8 on one unpadded example, one inactive neuron at a time, with respect to
    the embeddings."""
    embeddings = model.embedding(example).detach().requires_grad_()
    activity = layer_output(model, layer, embeddings)
    omega = torch.zeros_like(embeddings)
    for position in range(activity.shape[0]):
        for feature in range(activity.shape[1]):
            value = activity[position, feature]
            if value > 0:
                continue
            (w,) = torch.autograd.grad(value, embeddings, retain_graph=True)
            if w.norm() > 0:
                omega += frequency[position, feature] * value.detach() / w.square().sum() * w
    return omega[0]


def reference_streams(reference: list[Tensor]) -> dict[str, list]:
    """The same reference samples: unpadded one per batch (a mask of ones each), in
    batches padded on the left and right to different lengths, and as dicts."""
    first, second = padded(reference[:9], 10, left=True), padded(reference[9:])
    batches = [(first[0], None, first[1]), (second[0], None, second[1])]
    return {
        "unpadded": [(e, None, torch.ones_like(e)) for e in reference],
        "different_lengths": batches,
        "dicts": [{"input_ids": ids, "attention_mask": mask} for ids, _, mask in batches],
    }


def test_fit_counts_the_real_tokens_of_samples_of_any_length_and_padding():
    model, reference = masked_transformer(), sequences(count=20, longest=8, seed=3)
    layers = [model.fc1, model.fc2, model.head]
    expected = [plain_frequency(model, layer, reference) for layer in layers]
    ids, mask = padded(reference, 9)
    streams = {name: (stream, None) for name, stream in reference_streams(reference).items()}
    fits = {"tensor": (ids, mask), **streams}
    for name, (data, data_mask) in fits.items():
        insens = InactiveStateSensitivity(model, layers).fit(data, mask=data_mask)
        assert insens.reference_size == len(reference), name
        frequencies = insens.activation_frequency
        assert [tuple(f.shape) for f in frequencies] == [(8, 8), (8, 6), (3,)], name
        for frequency, wanted in zip(frequencies, expected):  # counts / counts, float32
            torch.testing.assert_close(frequency, wanted.float(), atol=1e-7, rtol=0)


OPTIONS = {
    "frequency": {},
    "uniform": {"weighting": "uniform"},
    "uniform_all_neurons": {"weighting": "uniform", "include_active": True},
    "frequency_all_neurons": {"include_active": True},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=list(OPTIONS))
@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_padded_examples_with_their_mask_give_the_omega_of_the_unpadded_ones(options, left):
    model, examples = masked_transformer(), sequences()
    reference = sequences(count=20, longest=8, seed=3)
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    insens.fit(reference_streams(reference)["different_lengths"])
    ids, mask = padded(examples, 8, left=left)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptumSSAWarning)  # attention: not piecewise linear
        omega = insens.attribute(ids, mask=mask, **options)
        for row, example in enumerate(examples):
            real = mask[row].bool()
            expected = insens.attribute(example, **options)[0]
            torch.testing.assert_close(omega[row][real], expected, **TOLERANCE)
            # no neuron of a pad, and no real token's neuron depends on one
            assert not omega[row][~real].any()


def test_omega_of_padded_examples_equals_the_plain_reference():
    model, examples = masked_transformer(), sequences(count=3)
    reference = sequences(count=20, longest=8, seed=3)
    # rounded as the fit keeps it: a count over a count in the default dtype
    frequency = plain_frequency(model, model.fc1, reference).float().double()
    ids, mask = padded(examples, 7, left=True)
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptumSSAWarning)
        reference_ids, reference_mask = padded(reference)
        omega = insens.fit(reference_ids, mask=reference_mask).attribute(ids, mask=mask)
    assert omega.abs().max() > 0
    for row, example in enumerate(examples):
        expected = plain_omega(model, model.fc1, example, frequency)
        torch.testing.assert_close(omega[row][mask[row].bool()], expected, **TOLERANCE)


def test_without_the_mask_the_pads_are_neurons():
    model, examples = masked_transformer(), sequences(count=4)
    ids, mask = padded(examples, 8)
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptumSSAWarning)
        masked = insens.attribute(ids, mask=mask, weighting="uniform")
        counted = insens.attribute(ids, additional_forward_args=(mask,), weighting="uniform")
    assert (masked - counted).abs().max() > 1e-3


def test_longer_inputs_than_the_reference_and_unmasked_lengths_are_errors():
    model, examples = masked_transformer(), sequences(longest=6)
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    reference_ids, reference_mask = padded(sequences(count=6, longest=4, seed=3))
    insens.fit(reference_ids, mask=reference_mask)
    ids, mask = padded(examples)
    with pytest.raises(ValueError, match="has 6 tokens but the longest reference sample"):
        insens.attribute(ids, mask=mask)
    with pytest.raises(ValueError, match="token sequences of different lengths need masks"):
        insens.fit([(example,) for example in examples])
    with pytest.raises(ValueError, match="mask= is the mask of a single batch"):
        insens.fit([ids], mask=mask)


def test_the_warning_for_a_mask_among_the_arguments_fires_once_per_explainer():
    model, reference = masked_transformer(), sequences(count=8, seed=3)
    ids, mask = padded(reference)
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    with pytest.warns(CaptumSSAWarning, match="looks like an attention mask"):
        insens.fit(ids, additional_forward_args=(mask,))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*attention mask.*")
        warnings.filterwarnings("ignore", message=".*piecewise linear.*")
        insens.attribute(ids, additional_forward_args=(mask,))
        InactiveStateSensitivity(model, model.fc1).fit(ids, mask=mask)
