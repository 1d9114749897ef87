"""LayeredInfluence from token ids: ``fit``, the layer choice and ``influence`` take the
ids as they are; ``attribute`` with ``embedding_layer=`` projects the units back to the
embeddings with DeconvNet. Reference: the same model called from its embeddings
(``model.from_embeddings``, the same modules and layer names) on ``model.embedding(ids)``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa import LayeredInfluence
from tests.behaviour import assert_same_snapshot, hooks_left, snapshot
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


def fitted_pair(model: TokenClassifier, **fit) -> tuple[LayeredInfluence, LayeredInfluence]:
    """The explainer fitted on ids and the reference fitted on their embeddings."""
    layers = [model.fc1, model.fc2]
    reference = token_reference()
    return (
        LayeredInfluence(model, layers, embedding_layer=model.embedding).fit(reference, **fit),
        LayeredInfluence(model.from_embeddings, layers).fit(embedded(model, reference), **fit),
    )


@pytest.mark.parametrize("criterion", ["linear", "dispersion"])
def test_the_layer_choice_on_ids_equals_the_choice_on_the_embeddings(criterion):
    model, _, _ = token_classifier(attention=True)
    reference = token_reference()
    expected = LayeredInfluence(model.from_embeddings, [model.fc1, model.fc2]).fit(
        embedded(model, reference), criterion=criterion
    )
    assert set(expected.layer_scores) == {"fc1", "fc2"}
    for embedding_layer in (None, model.embedding):
        explainer = LayeredInfluence(model, [model.fc1, model.fc2], embedding_layer=embedding_layer)
        for data in (reference, DataLoader(TensorDataset(reference), batch_size=16)):
            explainer.fit(data, criterion=criterion)
            assert explainer.layer_scores == pytest.approx(expected.layer_scores, abs=1e-12)
            assert explainer.chosen_layer_name == expected.chosen_layer_name
            assert explainer.reference_size == len(reference)


@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
def test_influence_from_ids_equals_the_embeddings_without_an_embedding_layer(attention):
    model, ids, _ = token_classifier(attention=attention)
    explainer = LayeredInfluence(model, [model.fc1, model.fc2]).fit(
        token_reference(), layer=model.fc2
    )
    reference = LayeredInfluence(model.from_embeddings, [model.fc1, model.fc2]).fit(
        embedded(model, token_reference()), layer=model.fc2
    )
    for target in (None, 1, [0, 1, 2, 0, 1, 2, 0]):
        influence = explainer.influence(ids, target=target)
        assert influence.shape == (7, 6, 5)
        torch.testing.assert_close(
            influence, reference.influence(embedded(model, ids), target=target), **TOLERANCE
        )


OPTIONS = {
    "top units": {},
    "top k": {"top_k": 4, "target": 2},
    "selector": {"neuron_selector": (slice(None), 3)},
}


@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
@pytest.mark.parametrize("layer", ["fc1", "fc2"])
@pytest.mark.parametrize("options", OPTIONS)
def test_the_reconstruction_from_ids_equals_the_embeddings_level_model(options, layer, attention):
    model, ids, _ = token_classifier(attention=attention)
    explainer, reference = fitted_pair(model, layer=layer)
    reconstruction = explainer.attribute(ids, **OPTIONS[options])
    expected = reference.attribute(embedded(model, ids), **OPTIONS[options])
    assert reconstruction.shape == embedded(model, ids).shape == (7, 6, 5)
    torch.testing.assert_close(reconstruction, expected, **TOLERANCE)
    assert reconstruction.abs().sum() > 0


def test_a_tuple_of_ids_gives_a_tuple_and_extra_arguments_reach_the_model():
    model, ids, types = token_classifier(attention=False)
    explainer, reference = fitted_pair(model, layer="fc2")
    expected = reference.attribute(embedded(model, ids), additional_forward_args=(types,))
    from_tuple = explainer.attribute((ids, types))
    assert isinstance(from_tuple, tuple) and len(from_tuple) == 1
    torch.testing.assert_close(from_tuple[0], expected, **TOLERANCE)
    from_extra = explainer.attribute(ids, additional_forward_args=(types,))
    torch.testing.assert_close(from_extra, expected, **TOLERANCE)
    assert not torch.allclose(explainer.attribute(ids), expected)


def test_integer_inputs_to_attribute_without_embedding_layer_are_a_clear_error():
    model, ids, _ = token_classifier(attention=False)
    explainer = LayeredInfluence(model, [model.fc1, model.fc2]).fit(
        token_reference(), layer=model.fc1
    )
    explainer.influence(ids)  # no gradient: fine
    with pytest.raises(TypeError, match=r"torch.int64.*embedding_layer="):
        explainer.attribute(ids)
    with pytest.raises(ValueError, match="not part of the model"):
        LayeredInfluence(model, [model.fc1], embedding_layer=torch.nn.Embedding(3, 5))
    assert hooks_left(model) == 0


def test_the_model_is_left_as_it_was():
    model, ids = token_classifier_in_user_state()
    before = snapshot(model)
    explainer, _ = fitted_pair(model)
    explainer.attribute(ids)
    explainer.attribute(ids, neuron_selector=1)
    assert_same_snapshot(before, snapshot(model))
    unused = LayeredInfluence(model, [model.fc1], embedding_layer=model.type_embedding)
    with pytest.raises(ValueError, match="did not run"):
        unused.fit(token_reference()).attribute(ids)
    assert_same_snapshot(before, snapshot(model))
