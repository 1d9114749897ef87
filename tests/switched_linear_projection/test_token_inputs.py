"""SwitchedLinearProjection from token ids with ``embedding_layer=``: the projection onto
the embedding layer's output. References: the same model called from its embeddings
(``model.from_embeddings``, the same modules) on ``model.embedding(ids)``, and Captum's
own layer gradient at the embedding (``LayerGradientXActivation`` without the
multiplication)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradientXActivation
from torch import Tensor, nn

from captum_ssa import ReusedLayerError, SwitchedLinearProjection
from tests.behaviour import assert_same_snapshot, hooks_left, snapshot
from tests.models import TokenClassifier, token_classifier, token_classifier_in_user_state

TOLERANCE = {"atol": 1e-10, "rtol": 0}  # float64 models: the same numbers up to rounding


def embedded(model: TokenClassifier, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model.embedding(ids)


def pair(
    model: TokenClassifier, layer: nn.Module, **kwargs
) -> tuple[SwitchedLinearProjection, SwitchedLinearProjection]:
    """The explainer from ids and the reference from the embeddings."""
    return (
        SwitchedLinearProjection(model, layer, embedding_layer=model.embedding, **kwargs),
        SwitchedLinearProjection(model.from_embeddings, layer, **kwargs),
    )


SELECTIONS = {
    "target": {"target": 1},
    "per-example target": {"target": [0, 2, 1, 1, 0, 2, 2]},
    "hidden unit": {"neuron_selector": (4, 2)},
    "hidden mean": {"neuron_selector": lambda out: out[:, :, 3].mean(1)},
}


@pytest.mark.filterwarnings("ignore:SwitchedLinearProjection. the network is not piecewise")
@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
@pytest.mark.parametrize("selection", SELECTIONS)
def test_weights_from_ids_equal_the_embeddings_level_model(selection, attention):
    model, ids, _ = token_classifier(attention=attention)
    layer = model.head if "target" in selection else model.fc2
    slp, reference = pair(model, layer)
    weights = slp.attribute(ids, **SELECTIONS[selection])
    expected = reference.attribute(embedded(model, ids), **SELECTIONS[selection])
    assert weights.shape == (7, 6, 5) == embedded(model, ids).shape
    torch.testing.assert_close(weights, expected, **TOLERANCE)
    assert weights.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:SwitchedLinearProjection. the network is not piecewise")
def test_a_logit_projection_is_captums_layer_gradient_at_the_embedding():
    model, ids, _ = token_classifier(attention=True)
    slp = SwitchedLinearProjection(model, model.head, embedding_layer=model.embedding)
    captum = LayerGradientXActivation(model, model.embedding, multiply_by_inputs=False)
    target = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    torch.testing.assert_close(
        slp.attribute(ids, target=target), captum.attribute(ids, target=target), **TOLERANCE
    )


def test_projection_decomposition_and_delta_equal_the_embeddings_level_model():
    model, ids, _ = token_classifier(attention=False)
    slp, reference = pair(model, model.fc2)
    embeddings = embedded(model, ids)
    projection = slp.project(ids, neuron_selector=(2, 1))
    expected = reference.project(embeddings, neuron_selector=(2, 1))
    for field in projection._fields:
        torch.testing.assert_close(
            getattr(projection, field), getattr(expected, field), **TOLERANCE
        )
    # activity = <w, embeddings> + bias, in the embeddings' space
    torch.testing.assert_close(
        (projection.weights * embeddings).sum((1, 2)) + projection.bias,
        projection.activity,
        **TOLERANCE,
    )
    parts, delta = slp.decompose(ids, neuron_selector=(2, 1), return_convergence_delta=True)
    expected_parts, expected_delta = reference.decompose(
        embeddings, neuron_selector=(2, 1), return_convergence_delta=True
    )
    torch.testing.assert_close(parts, expected_parts, **TOLERANCE)
    torch.testing.assert_close(delta, expected_delta, **TOLERANCE)


@pytest.mark.filterwarnings("ignore:SwitchedLinearProjection. the network is not piecewise")
@pytest.mark.parametrize("attention", [False, True], ids=["mlp", "attention"])
def test_baselines_are_token_ids_whose_embeddings_start_the_path(attention):
    # as in Captum's layer methods: baselines in the inputs' space, read at the layer
    model, ids, _ = token_classifier(attention=attention)
    baseline_ids = torch.zeros_like(ids)
    slp, reference = pair(model, model.head, multiply_by_inputs=True)
    for baselines, start in ((baseline_ids, baseline_ids), (3, torch.full_like(ids, 3))):
        parts, delta = slp.attribute(
            ids, target=2, baselines=baselines, return_convergence_delta=True
        )
        expected_parts, expected_delta = reference.attribute(
            embedded(model, ids),
            target=2,
            baselines=embedded(model, start),
            return_convergence_delta=True,
        )
        torch.testing.assert_close(parts, expected_parts, **TOLERANCE)
        torch.testing.assert_close(delta, expected_delta, **TOLERANCE)
        # compute_convergence_delta takes the same start and end points as attribute
        torch.testing.assert_close(
            slp.compute_convergence_delta(parts, baselines, ids, target=2), delta, **TOLERANCE
        )


def test_a_tuple_of_ids_gives_a_tuple_and_extra_arguments_reach_the_model():
    model, ids, types = token_classifier(attention=False)
    slp, reference = pair(model, model.head)
    expected = reference.attribute(embedded(model, ids), target=1, additional_forward_args=(types,))
    from_tuple = slp.attribute((ids, types), target=1)
    assert isinstance(from_tuple, tuple) and len(from_tuple) == 1
    torch.testing.assert_close(from_tuple[0], expected, **TOLERANCE)
    from_extra = slp.attribute(ids, target=1, additional_forward_args=(types,))
    assert isinstance(from_extra, Tensor)
    torch.testing.assert_close(from_extra, expected, **TOLERANCE)
    # the types change the answer, so they did reach the model
    assert not torch.allclose(slp.attribute(ids, target=1), expected)


def test_integer_inputs_without_embedding_layer_are_a_clear_error():
    model, ids, _ = token_classifier(attention=False)
    slp = SwitchedLinearProjection(model, model.head)
    with pytest.raises(TypeError, match=r"torch.int64.*embedding_layer="):
        slp.attribute(ids, target=0)
    with pytest.raises(TypeError, match="embedding_layer="):
        slp.compute_convergence_delta(torch.zeros(7, 6), 0, ids, target=0)
    assert hooks_left(model) == 0


def test_a_wrong_embedding_layer_is_a_clear_error():
    model, ids, _ = token_classifier(attention=False)
    with pytest.raises(ValueError, match="not part of the model"):
        SwitchedLinearProjection(model, model.head, embedding_layer=nn.Embedding(12, 5))
    with pytest.raises(TypeError, match=r"embedding_layer must be a torch\.nn\.Module"):
        SwitchedLinearProjection(model, model.head, embedding_layer="embedding")
    # the token-type embedding runs only when types are given
    unused = SwitchedLinearProjection(model, model.head, embedding_layer=model.type_embedding)
    with pytest.raises(ValueError, match="did not run"):
        unused.attribute(ids, target=0)
    assert hooks_left(model) == 0


def test_the_model_is_left_as_it_was():
    model, ids = token_classifier_in_user_state()
    before = snapshot(model)
    slp = SwitchedLinearProjection(
        model, model.head, multiply_by_inputs=True, embedding_layer=model.embedding
    )
    with pytest.warns(UserWarning, match="not piecewise linear"):
        slp.attribute(ids, target=1, baselines=0, return_convergence_delta=True)
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match="does not select a neuron"):
        slp.attribute(ids, target=7)
    assert_same_snapshot(before, snapshot(model))


class TiedEmbedding(nn.Module):
    """Calls its embedding twice (a reused module): its output is ambiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head((self.embedding(ids) + self.embedding(ids.flip(1))).mean(1))


def test_an_embedding_layer_that_runs_twice_is_a_clear_error():
    model = TiedEmbedding().eval()
    slp = SwitchedLinearProjection(model, model.head, embedding_layer=model.embedding)
    with pytest.raises(ReusedLayerError, match="runs more than once"):
        slp.attribute(torch.randint(0, 12, (4, 6)), target=0)
    assert hooks_left(model) == 0
