"""The transformer tutorial's task and model (tutorials/token_task.py): the generator keeps
its rule, the model learns the rule in the notebook's fast sizes, and the helpers the
notebook measures with agree with plain loops and with the package's graph evaluation."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tutorials"))

import token_task

from captum_ssa import StepwiseSensitivity, evaluate_graph
from tests.behaviour import hooks_left

TASK = token_task.TokenTask()


def test_every_sequence_holds_one_marker_and_its_label_is_the_rules():
    split = token_task.generate(TASK, 400, seed=3)
    assert split.ids.shape == (400, TASK.length)
    for ids, label, position in zip(split.ids.tolist(), split.labels, split.positions):
        markers = [t for t, token in enumerate(ids) if 1 <= token <= TASK.markers]
        assert markers == [int(position)]
        marker = ids[markers[0]] - 1
        assert int(label) == (marker + markers[0]) % TASK.classes
        others = ids[: markers[0]] + ids[markers[0] + 1 :]
        assert all(1 + TASK.markers <= token < TASK.vocabulary for token in others)
    assert torch.equal(TASK.rule(split.ids), split.labels)
    # the marker and its position are uniform and independent, so the classes are balanced
    counts = torch.bincount(split.labels, minlength=TASK.classes)
    assert counts.min() > 0.18 * 400 and counts.max() < 0.32 * 400
    assert token_task.BLANK not in split.ids


def test_the_generator_is_seeded_and_the_splits_differ():
    first, again = token_task.generate(TASK, 50, seed=1), token_task.generate(TASK, 50, seed=1)
    assert torch.equal(first.ids, again.ids) and torch.equal(first.labels, again.labels)
    data = token_task.make_data(TASK, 50, 50, seed=1)
    assert torch.equal(data.train.ids, first.ids)
    assert not torch.equal(data.train.ids, data.test.ids)


def test_the_rule_refuses_a_sequence_without_exactly_one_marker():
    ids = token_task.generate(TASK, 3, seed=0).ids
    ids[1] = 1 + TASK.markers  # all distractors
    with pytest.raises(ValueError, match="exactly one marker"):
        TASK.rule(ids)
    ids[1, :2] = torch.tensor([1, 2])  # two markers
    with pytest.raises(ValueError, match="exactly one marker"):
        TASK.rule(ids)


@pytest.fixture(scope="module")
def trained() -> tuple[token_task.TokenTransformer, token_task.TokenData]:
    torch.set_num_threads(1)
    sizes = token_task.FAST_SIZES
    data = token_task.make_data(TASK, sizes.train, sizes.test)
    model = token_task.train_transformer(data, epochs=sizes.epochs, seed=sizes.seeds[0])
    return model, data


def test_the_model_takes_ids_and_returns_logits_and_the_blank_stays_zero(trained):
    model, data = trained
    assert not model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    with torch.no_grad():
        assert model(data.test.ids[:5]).shape == (5, TASK.classes)
    # the blank token's embedding is the zero baseline: training must not move it
    blank = model.token_embedding.weight[token_task.BLANK]
    assert torch.equal(blank, torch.zeros_like(blank))


def test_the_fast_model_learns_the_rule_and_needs_its_mlps(trained):
    model, data = trained
    chance = 1 / TASK.classes
    test_accuracy = token_task.accuracy(model, data.test.ids, data.test.labels)
    assert test_accuracy > 0.9 > 3 * chance
    # the task's premise: the MLPs take part (with the marker alone they did not)
    nothing = torch.zeros(0, dtype=torch.long)
    with token_task.keeping(model, dict.fromkeys(model.mlp_layers(), nothing)):
        without_mlps = token_task.accuracy(model, data.test.ids, data.test.labels)
    assert without_mlps < test_accuracy - 0.1


def test_token_scores_match_a_plain_loop():
    attribution = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    total = token_task.token_scores(attribution, "sum")
    norm = token_task.token_scores(attribution, "norm")
    for n in range(3):
        for t in range(5):
            row = attribution[n, t].tolist()
            assert total[n, t].item() == pytest.approx(abs(sum(row)), abs=1e-6)
            assert norm[n, t].item() == pytest.approx(sum(v * v for v in row) ** 0.5, abs=1e-6)
    with pytest.raises(ValueError, match="'sum' or 'norm'"):
        token_task.token_scores(attribution, "max")


def test_marker_ranks_match_a_plain_loop_with_ties_against_the_marker():
    generator = torch.Generator().manual_seed(0)
    # small integers: many ties
    scores = torch.randint(0, 4, (200, 6), generator=generator).float()
    positions = torch.randint(0, 6, (200,), generator=generator)
    ranks = token_task.marker_ranks(scores, positions)
    for n in range(200):
        row, position = scores[n].tolist(), int(positions[n])
        expected = sum(1 for t, s in enumerate(row) if t != position and s >= row[position])
        assert ranks[n].item() == expected
    top = sum(1 for n in range(200) if ranks[n] == 0) / 200
    assert token_task.top_rate(ranks) == pytest.approx(top)
    # a constant map never ranks the marker first; the marker alone on top ranks 0
    assert (token_task.marker_ranks(torch.ones(4, 6), positions[:4]) == 5).all()
    one_hot = torch.nn.functional.one_hot(positions[:4], 6).float()
    assert (token_task.marker_ranks(one_hot, positions[:4]) == 0).all()


def test_keeping_zeroes_the_other_neurons_at_every_token_and_removes_its_hooks(trained):
    model, data = trained
    layer = model.mlp_layers()[0]
    kept = torch.tensor([1, 4, 9])
    outputs = []
    # what the next layer reads: the ReLU's output after every forward hook
    reader = model.blocks[0].mlp.fc2
    handle = reader.register_forward_pre_hook(lambda _m, args: outputs.append(args[0]))
    try:
        with token_task.keeping(model, {layer: kept}), torch.no_grad():
            model(data.test.ids[:3])
    finally:
        handle.remove()
    (output,) = outputs
    dropped = torch.ones(output.shape[-1], dtype=torch.bool)
    dropped[kept] = False
    assert (output[..., dropped] == 0).all()
    assert (output[..., kept] != 0).any()
    assert hooks_left(model) == 0


def test_keeping_a_graphs_neurons_gives_evaluate_graphs_accuracy(trained):
    # the notebook's random-graph control masks with `keeping`; the SSA graph beside it is
    # evaluated by the package: both must mask the same way for the comparison to hold
    model, data = trained
    layers = model.mlp_layers()
    ssa = StepwiseSensitivity(model, [*layers, model.head], neuron_dim=-1)
    for percentile in (50, 90):
        graph = ssa.attribute(
            data.train.ids[:300], target=data.train.labels[:300], percentile=percentile
        )
        kept = {layer: graph.neurons(name) for layer, name in zip(layers, graph.layer_names)}
        with token_task.keeping(model, kept):
            mine = token_task.accuracy(model, data.test.ids, data.test.labels)
        report = evaluate_graph(model, graph, data.test.ids, data.test.labels)
        assert mine == pytest.approx(report.accuracy)
        assert report.kept_fraction < 1
    # keeping every neuron is the plain network
    every = {layer: torch.arange(32) for layer in layers}
    with token_task.keeping(model, every):
        assert token_task.accuracy(model, data.test.ids, data.test.labels) == pytest.approx(
            report.model_accuracy
        )


def test_random_neurons_are_distinct_sorted_and_seeded():
    first = token_task.random_neurons(32, 8, torch.Generator().manual_seed(2))
    again = token_task.random_neurons(32, 8, torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert len(set(first.tolist())) == 8 and first.tolist() == sorted(first.tolist())
    assert first.min() >= 0 and first.max() < 32


def forward_before_masks(model: token_task.TokenTransformer, ids: torch.Tensor) -> torch.Tensor:
    """``TokenTransformer.forward`` as it was before it took a mask, written out from its
    modules: the notebook's models were trained with it, and ``mask=None`` must compute it."""
    positions = torch.arange(ids.shape[1])
    x = model.token_embedding(ids) + model.position_embedding(positions)
    for block in model.blocks:
        attention, normed = block.attention, block.attention_norm(x)
        batch, length, width = normed.shape
        per_head = width // attention.heads
        query, key, value = (
            part.reshape(batch, length, attention.heads, per_head).transpose(1, 2)
            for part in attention.query_key_value(normed).chunk(3, dim=-1)
        )
        weights = (query @ key.transpose(-2, -1) / math.sqrt(per_head)).softmax(-1)
        mixed = (weights @ value).transpose(1, 2).reshape(batch, length, width)
        x = x + attention.out(mixed)
        x = x + block.mlp.fc2(block.mlp.relu(block.mlp.fc1(block.mlp_norm(x))))
    return model.head(model.norm(x).mean(1))


def test_without_a_mask_the_model_computes_what_it_was_trained_as(trained):
    # bit for bit, the logits and the gradients of the training loss: the notebook's models
    # and every number of its sections before the mask are those of the model before masks
    model, data = trained
    torch.manual_seed(5)
    untrained = token_task.TokenTransformer(TASK)
    for network in (model, untrained):
        ids, labels = data.train.ids[:64], data.train.labels[:64]
        gradients = []
        for forward in (network, lambda ids, network=network: forward_before_masks(network, ids)):
            logits = forward(ids)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            gradients.append((logits, torch.autograd.grad(loss, list(network.parameters()))))
        (logits, grads), (expected_logits, expected_grads) = gradients
        assert torch.equal(logits, expected_logits)
        assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads))


def padded_examples(
    examples: list[torch.Tensor], length: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences ``(L,)`` padded with the blank token to ``length`` on the right (or the
    left), and their mask (1 = real token)."""
    ids = torch.full((len(examples), length), token_task.BLANK, dtype=torch.long)
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        place = slice(length - len(example), length) if left else slice(0, len(example))
        ids[row, place], mask[row, place] = example, 1
    return ids, mask


def mlp_outputs(model: token_task.TokenTransformer, ids: torch.Tensor, mask=None) -> list:
    """Every block's MLP ReLU output ``(N, T, hidden)``: the neurons the methods read."""
    outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda _m, _i, output: outputs.append(output))
        for layer in model.mlp_layers()
    ]
    try:
        with torch.no_grad():
            logits = model(ids) if mask is None else model(ids, mask)
    finally:
        for handle in handles:
            handle.remove()
    return [logits, *outputs]


@pytest.mark.parametrize("left", [False, True], ids=["right_padded", "left_padded"])
def test_padded_sequences_with_their_mask_give_the_unpadded_logits_and_neurons(trained, left):
    # float64, so equal means to rounding; sequences of 3 to 10 tokens, each against itself
    # unpadded, run alone: its logits and every MLP neuron at its real tokens
    model, data = trained
    model = copy.deepcopy(model).double()
    generator = torch.Generator().manual_seed(4)
    sizes = [10, 3, 7, 10, 5, 9]
    examples = [
        data.test.ids[row, torch.randperm(10, generator=generator)[:size].sort().values]
        for row, size in enumerate(sizes)
    ]
    ids, mask = padded_examples(examples, 14, left=left)
    padded_results = mlp_outputs(model, ids, mask)
    for row, example in enumerate(examples):
        real = mask[row].bool()
        expected = mlp_outputs(model, example[None])
        torch.testing.assert_close(padded_results[0][row], expected[0][0], rtol=0, atol=1e-9)
        for output, wanted in zip(padded_results[1:], expected[1:]):
            torch.testing.assert_close(output[row][real], wanted[0], rtol=0, atol=1e-9)
    # the pads are invisible: other tokens, or the mask as booleans, change nothing
    others = torch.where(mask.bool(), ids, torch.randint_like(ids, 1, TASK.vocabulary))
    with torch.no_grad():
        torch.testing.assert_close(model(others, mask.bool()), padded_results[0], rtol=0, atol=1e-9)
        # without the mask they leak in: the model reads them as tokens
        assert (model(ids) - padded_results[0]).abs().max() > 0.1


def test_the_float32_model_with_a_mask_meets_the_specs_tolerance(trained):
    # the notebook's models run in float32: padded with the mask, 1e-6 of the logits' size
    model, data = trained
    examples = data.test.ids[:50]
    ids, mask = padded_examples(list(examples), 14)
    with torch.no_grad():
        expected = model(examples)
        padded_logits = model(ids, mask)
    assert (padded_logits - expected).abs().max() <= 1e-6 * expected.abs().max()
    with torch.no_grad():  # a mask of ones is no mask
        torch.testing.assert_close(model(examples, torch.ones_like(examples)), expected)
