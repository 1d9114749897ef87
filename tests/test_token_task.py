"""The transformer tutorial's task and model (tutorials/token_task.py): the generator keeps
its rule, the model learns the rule in the notebook's fast sizes, and the helpers the
notebook measures with agree with plain loops and with the package's graph evaluation."""

from __future__ import annotations

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
