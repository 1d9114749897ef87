"""LayeredInfluence with masks: a token layer's units are those of the real tokens, and
two examples are compared on the positions both have, counted among the real tokens
(their common prefix once the pads are removed), so padded examples with their mask
give the results of the unpadded ones. References: the unpadded
examples, and a plain loop over pairs on their common prefixes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from captum_ssa import CaptumSSAWarning, LayeredInfluence
from captum_ssa._core.layered_influence.influence import SequenceLengths, monotone_influence
from tests.layered_influence.references import slow_sequence_influence
from tests.models import MaskedTransformer, masked_transformer, padded, sequences

TOLERANCE = {"atol": 1e-9, "rtol": 0}  # float64: equal up to rounding (the spec asks 1e-6)


def reference_samples() -> list[Tensor]:
    """Samples of lengths 2 to 8 on which the model predicts three classes."""
    return sequences(count=30, longest=8, seed=3)


def reference_streams(reference: list[Tensor]) -> dict[str, list]:
    """The same samples: one unpadded per batch (a mask of ones each), in batches padded
    on the left and the right to different lengths, and as dicts."""
    first, second = padded(reference[:11], 10, left=True), padded(reference[11:])
    batches = [(first[0], None, first[1]), (second[0], None, second[1])]
    return {
        "unpadded": [(e, None, torch.ones_like(e)) for e in reference],
        "different_lengths": batches,
        "dicts": [{"input_ids": ids, "attention_mask": mask} for ids, _, mask in batches],
    }


def unpadded_activations(model: MaskedTransformer, layer: nn.Module, examples: list[Tensor]):
    """Each unpadded example's layer output (length, units) and the model's labels."""
    outputs, labels = [], []
    with torch.no_grad():
        for example in examples:
            kept: list[Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out, kept=kept: kept.append(out))
            labels.append(int(model(example).argmax(1)))
            handle.remove()
            outputs.append(kept[0][0])
    return outputs, labels


@pytest.mark.parametrize("fit_on", ["tensor", "unpadded", "different_lengths", "dicts"])
def test_influence_of_padded_examples_equals_pairs_compared_on_their_common_prefix(fit_on):
    model, examples, reference = masked_transformer(), sequences(), reference_samples()
    explainer = LayeredInfluence(model, [model.fc1, model.fc2])
    if fit_on == "tensor":
        reference_ids, reference_mask = padded(reference, 9)
        explainer.fit(reference_ids, layer=model.fc1, mask=reference_mask)
    else:
        explainer.fit(reference_streams(reference)[fit_on], layer=model.fc1)
    assert explainer.reference_size == len(reference)
    activations, labels = unpadded_activations(model, model.fc1, reference)
    queries, query_labels = unpadded_activations(model, model.fc1, examples)
    expected = slow_sequence_influence(queries, query_labels, activations, labels)
    for left in (False, True):
        ids, mask = padded(examples, 8, left=left)
        influence = explainer.influence(ids, mask=mask, points_per_chunk=4)
        for row, wanted in enumerate(expected):
            real = mask[row].bool()
            torch.testing.assert_close(influence[row][real], wanted, **TOLERANCE)
            assert not influence[row][~real].any()
    for example, wanted in zip(examples, expected):  # unpadded queries, no mask
        torch.testing.assert_close(explainer.influence(example)[0], wanted, **TOLERANCE)


def test_the_sequence_kernel_equals_pairs_with_near_and_coincident_points():
    generator = torch.Generator().manual_seed(0)

    def rows(lengths: list[int]) -> list[Tensor]:
        return [torch.randn(n, 3, generator=generator, dtype=torch.float64) for n in lengths]

    queries, reference = rows([2, 5, 4]), rows([3, 1, 6, 6, 2, 2])
    reference[0][:3] = queries[1][:3] + 1e-9  # near a query on their common prefix
    reference[4][:2] = queries[0]  # coincident with a query on its whole length
    query_labels, reference_labels = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 2, 1, 1, 2])

    def flat(parts: list[Tensor], positions: int) -> Tensor:
        padded_rows = torch.zeros(len(parts), positions, 3, dtype=torch.float64)
        for row, part in enumerate(parts):
            padded_rows[row, : len(part)] = part
        return padded_rows.reshape(len(parts), -1)

    lengths = SequenceLengths(
        torch.tensor([len(q) for q in queries]), torch.tensor([len(r) for r in reference]), 3
    )
    # the reference in two blocks of different widths, as a stream of pieces keeps it
    blocks = [flat(reference[:4], 6), flat(reference[4:], 2)]
    fast = monotone_influence(
        flat(queries, 5),
        query_labels,
        blocks,
        reference_labels,
        points_per_chunk=2,
        lengths=lengths,
    )
    expected = slow_sequence_influence(queries, query_labels, reference, reference_labels)
    for row, wanted in enumerate(expected):
        scale = wanted.abs().max()
        torch.testing.assert_close(
            fast.reshape(3, 5, 3)[row, : len(wanted)] / scale, wanted / scale
        )
        assert not fast.reshape(3, 5, 3)[row, len(wanted) :].any()


@pytest.mark.parametrize(
    "options",
    [{"top_fraction": 0.1}, {"top_k": 5}, {"neuron_selector": (slice(None), 3)}],
    ids=["top_fraction", "top_k", "neuron_selector"],
)
def test_attribute_on_padded_examples_equals_the_unpadded_ones(options):
    model, examples = masked_transformer(), sequences()
    explainer = LayeredInfluence(model, model.fc1, embedding_layer=model.embedding)
    explainer.fit(reference_streams(reference_samples())["different_lengths"])
    ids, mask = padded(examples, 8, left=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptumSSAWarning)  # not ReLU: softmax attention
        reconstruction = explainer.attribute(ids, mask=mask, **options)
        for row, example in enumerate(examples):
            real = mask[row].bool()
            expected = explainer.attribute(example, **options)[0]
            assert expected.abs().max() > 0
            torch.testing.assert_close(reconstruction[row][real], expected, **TOLERANCE)
            assert not reconstruction[row][~real].any()


def test_the_layer_choice_scores_padded_streams_as_the_unpadded_samples():
    model, reference = masked_transformer(), reference_samples()
    streams = reference_streams(reference)
    for criterion in ("linear", "dispersion"):
        expected = LayeredInfluence(model, [model.fc1, model.fc2]).fit(
            streams["unpadded"], criterion=criterion
        )
        padded_fit = LayeredInfluence(model, [model.fc1, model.fc2]).fit(
            streams["different_lengths"], criterion=criterion
        )
        assert padded_fit.chosen_layer_name == expected.chosen_layer_name
        assert list(padded_fit.layer_scores) == list(expected.layer_scores) == ["fc1", "fc2"]
        for name, score in expected.layer_scores.items():
            assert padded_fit.layer_scores[name] == pytest.approx(score, abs=1e-9)


def test_a_layer_without_a_token_axis_is_unaffected_by_the_mask():
    # the logits (N, C): the mask only reaches the model, which leaves the pads out
    model, examples, reference = masked_transformer(), sequences(), reference_samples()
    explainer = LayeredInfluence(model, [model.fc1, model.head])
    explainer.fit(reference_streams(reference)["different_lengths"], layer="head")
    ids, mask = padded(examples, 9)
    influence = explainer.influence(ids, mask=mask)
    expected = torch.cat([explainer.influence(example) for example in examples])
    assert influence.shape == (len(examples), 3)
    torch.testing.assert_close(influence, expected, **TOLERANCE)


def test_lengths_without_masks_and_too_many_top_units_are_errors():
    model, examples, reference = masked_transformer(), sequences(), reference_samples()
    explainer = LayeredInfluence(model, model.fc1, embedding_layer=model.embedding)
    with pytest.raises(ValueError, match="token sequences of different lengths with their masks"):
        explainer.fit([(example,) for example in reference])
    explainer.fit(reference_streams(reference)["different_lengths"])
    ids, mask = padded(examples)  # the shortest has 2 real tokens: 16 units of fc1
    with pytest.raises(ValueError, match="from 1 to the real tokens' 16 units, got 17"):
        explainer.attribute(ids, mask=mask, top_k=17)
