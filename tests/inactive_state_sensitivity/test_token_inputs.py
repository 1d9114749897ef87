"""InactiveStateSensitivity from token ids: ``fit`` takes the ids as they are, and
``attribute`` with ``embedding_layer=`` gives Omega with respect to the embeddings.
References: the same model called from its embeddings (``model.from_embeddings``, the
same modules) on ``model.embedding(ids)``, and the slow plain reference of eq. 8."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import InactiveStateSensitivity
from tests.behaviour import assert_same_snapshot, hooks_left, snapshot
from tests.inactive_state_sensitivity.test_inactive_state_sensitivity import reference_insens
from tests.models import (
    TokenClassifier,
    token_classifier,
    token_classifier_in_user_state,
    token_reference,
)

TOLERANCE = {"atol": 1e-10, "rtol": 0}  # float64 models: the same numbers up to rounding


def embedded(model: TokenClassifier, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model.embedding(ids)


def fitted_pair(
    model: TokenClassifier, layer, reference: Tensor
) -> tuple[InactiveStateSensitivity, InactiveStateSensitivity]:
    """The explainer fitted on ids and the reference fitted on their embeddings."""
    return (
        InactiveStateSensitivity(model, layer, embedding_layer=model.embedding).fit(reference),
        InactiveStateSensitivity(model.from_embeddings, layer).fit(embedded(model, reference)),
    )


def test_a_fit_on_ids_equals_a_fit_on_the_embeddings_with_or_without_embedding_layer():
    model, _, _ = token_classifier(attention=True)
    reference = token_reference()
    expected = InactiveStateSensitivity(model.from_embeddings, [model.fc1, model.fc2]).fit(
        embedded(model, reference)
    )
    for embedding_layer in (None, model.embedding):
        insens = InactiveStateSensitivity(
            model, [model.fc1, model.fc2], embedding_layer=embedding_layer
        )
        for data in (reference, DataLoader(TensorDataset(reference), batch_size=16)):
            insens.fit(data)
            assert insens.reference_size == len(reference)
            frequencies = insens.activation_frequency
            assert [tuple(f.shape) for f in frequencies] == [(6, 7), (6, 5)]
            for frequency, wanted in zip(frequencies, expected.activation_frequency):
                assert torch.equal(frequency, wanted)


OPTIONS = {
    "frequency": {},
    "uniform": {"weighting": "uniform"},
    "include active": {"include_active": True},
    "forward mode": {"jacobian_mode": "forward"},
    "reverse mode": {"jacobian_mode": "reverse", "jacobian_vectors_per_chunk": 5},
    "selector": {"neuron_selector": (slice(0, 3), 2)},
}


@pytest.mark.filterwarnings("ignore:InactiveStateSensitivity. the network is not piecewise")
@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
@pytest.mark.parametrize("options", OPTIONS)
def test_omega_from_ids_equals_the_embeddings_level_model(options, attention):
    model, ids, _ = token_classifier(attention=attention)
    layer = model.fc2 if attention else model.fc1
    insens, reference = fitted_pair(model, layer, token_reference())
    omega = insens.attribute(ids, **OPTIONS[options])
    expected = reference.attribute(embedded(model, ids), **OPTIONS[options])
    assert omega.shape == embedded(model, ids).shape == (7, 6, 5)
    torch.testing.assert_close(omega, expected, **TOLERANCE)
    assert omega.abs().sum() > 0


def test_omega_from_ids_equals_the_plain_reference():
    model, ids, _ = token_classifier(attention=False)
    reference = token_reference()
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    omega = insens.fit(reference).attribute(ids[:3])
    expected = reference_insens(
        model.from_embeddings, model.fc1, embedded(model, ids[:3]), embedded(model, reference)
    )
    torch.testing.assert_close(omega, expected, **TOLERANCE)


def test_layer_lists_and_tuples_of_ids():
    model, ids, types = token_classifier(attention=False)
    layers = [model.fc1, model.fc2]
    reference = token_reference()
    insens, expected_insens = fitted_pair(model, layers, reference)
    pooled = insens.attribute(ids, pool_layers=True)
    assert isinstance(pooled, Tensor)
    torch.testing.assert_close(
        pooled, expected_insens.attribute(embedded(model, ids), pool_layers=True), **TOLERANCE
    )
    # a tuple in gives a tuple out, one tensor shaped like the embeddings per layer
    per_layer = insens.attribute((ids, types))
    expected = expected_insens.attribute(embedded(model, ids), additional_forward_args=(types,))
    assert len(per_layer) == 2
    for result, wanted in zip(per_layer, expected):
        assert isinstance(result, tuple) and len(result) == 1
        torch.testing.assert_close(result[0], wanted, **TOLERANCE)


def test_integer_inputs_without_embedding_layer_are_a_clear_error():
    model, ids, _ = token_classifier(attention=False)
    insens = InactiveStateSensitivity(model, model.fc1).fit(token_reference())
    with pytest.raises(TypeError, match=r"torch.int64.*embedding_layer="):
        insens.attribute(ids)
    with pytest.raises(ValueError, match="not part of the model"):
        InactiveStateSensitivity(model, model.fc1, embedding_layer=torch.nn.Embedding(3, 5))
    assert hooks_left(model) == 0


def test_the_model_is_left_as_it_was():
    model, ids = token_classifier_in_user_state(train=False)
    before = snapshot(model)
    insens = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.embedding)
    insens.fit(token_reference()).attribute(ids)
    assert_same_snapshot(before, snapshot(model))
    unused = InactiveStateSensitivity(model, model.fc1, embedding_layer=model.type_embedding)
    with pytest.raises(ValueError, match="did not run"):
        unused.attribute(ids, weighting="uniform")
    assert_same_snapshot(before, snapshot(model))
