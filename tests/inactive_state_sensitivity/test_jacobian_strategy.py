"""Insens's Jacobian strategies (forward, reverse, the per-neuron loop) and the
measured choice between them: every strategy gives the plain reference's Omega,
and the automatic choice follows the measured times (injected here, never read
from the wall clock)."""

from __future__ import annotations

import pytest
import torch

from captum_ssa import InactiveStateSensitivity
from captum_ssa._utils import jacobian
from captum_ssa._utils.jacobian import choose_mode, estimated_time, fastest
from tests.inactive_state_sensitivity.test_inactive_state_sensitivity import reference_insens
from tests.models import PIECEWISE_LINEAR_MODELS, build

MODES = ("forward", "reverse", "loop")


@pytest.mark.parametrize("name", PIECEWISE_LINEAR_MODELS)
@pytest.mark.parametrize("mode", [*MODES, "auto"])
def test_every_strategy_equals_the_plain_reference(name, mode):
    model, layers, shape = build(name, 3)
    model.double()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    reference = torch.randn(15, *shape, generator=generator, dtype=torch.float64)
    layer = next(iter(layers.values()))
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    torch.testing.assert_close(
        insens.attribute(x, jacobian_mode=mode),
        reference_insens(model, layer, x, reference),
        rtol=1e-9,
        atol=1e-11,
    )


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
def test_forcing_each_strategy_gives_the_same_omega_on_every_layer(chunk_size):
    model, layers, shape = build("cnn_bn", 1)
    model.double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, list(layers.values())).fit(
        torch.randn(20, *shape, dtype=torch.float64)
    )
    results = {
        mode: insens.attribute(x, jacobian_mode=mode, jacobian_vectors_per_chunk=chunk_size)
        for mode in [*MODES, "auto"]
    }
    for mode in (*MODES[1:], "auto"):
        for got, expected in zip(results[mode], results["forward"]):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def scripted_times(monkeypatch, seconds_per_item: dict[str, float]) -> list[tuple[str, int]]:
    """Replace the timing of the strategies: ``count`` rows or columns of a mode take
    ``seconds_per_item[mode] * count`` (they are still computed). Returns the list
    to which every timed part is added as ``(mode, count)``."""
    timed: list[tuple[str, int]] = []

    def fake_timed_advance(strategy, count):
        strategy.advance(strategy.done + count)
        timed.append((strategy.mode, count))
        return seconds_per_item[strategy.mode] * count

    monkeypatch.setattr(jacobian, "timed_advance", fake_timed_advance)
    return timed


def winning(winner: str) -> dict[str, float]:
    return {mode: 1e-9 if mode == winner else 1.0 for mode in MODES}


def conv2_units(model, x):
    with torch.no_grad():
        return model.conv2(model.pool1(torch.relu(model.conv1(x[:1]))))[0].numel()


@pytest.mark.parametrize("winner", MODES)
def test_the_automatic_choice_follows_the_measured_times_and_is_kept(winner, monkeypatch):
    model, layers, shape = build("cnn", 2)
    model.double()
    layer = layers["conv2"]
    x = torch.randn(2, *shape, dtype=torch.float64)
    reference = torch.randn(12, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    timed = scripted_times(monkeypatch, winning(winner))
    omega = insens.attribute(x, jacobian_vectors_per_chunk=2)
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == winner and plan.chunk_size == (1 if winner == "loop" else 2)
    torch.testing.assert_close(omega, reference_insens(model, layer, x, reference))
    # a later call of the same shapes reuses the plan: nothing is timed again
    measured = len(timed)
    assert torch.equal(insens.attribute(x, jacobian_vectors_per_chunk=2), omega)
    assert len(timed) == measured
    # other shapes are measured again
    insens.attribute(x[:1], jacobian_vectors_per_chunk=2)
    assert len(insens._jacobian_plans) == 2 and len(timed) > measured


def test_near_ties_go_to_the_first_measured():
    times = {"forward": 2.0, "reverse": 1.0, "loop": 1.0}
    assert fastest(times) == fastest(dict(times)) == "reverse"
    assert fastest({"loop": 1.0, "reverse": 1.0}) == "loop"
    # within TIE_MARGIN of the smallest: the first measured
    near = 1 + jacobian.TIE_MARGIN / 2
    assert fastest({"forward": near, "reverse": 1.0, "loop": 0.99}) == "forward"
    # beyond it: the smallest
    far = 1 + 2 * jacobian.TIE_MARGIN
    assert fastest({"forward": far, "reverse": 1.0, "loop": 1.0}) == "reverse"


def test_a_job_is_estimated_from_its_chunks():
    # 2 s for a whole chunk of 10 of 95 columns: 10 chunks
    assert estimated_time(2.0, 10, 10, 95) == pytest.approx(20.0)
    # the loop: 4 rows timed in 1 s, 100 rows
    assert estimated_time(1.0, 4, 1, 100) == pytest.approx(25.0)
    # a short last chunk is scaled up to a whole one
    assert estimated_time(1.0, 5, 10, 30) == pytest.approx(6.0)


@pytest.mark.parametrize("chunk_size", [None, 1000])
@pytest.mark.parametrize("winner", MODES)
def test_a_job_of_one_chunk_is_timed_whole_and_the_others_measured(chunk_size, winner, monkeypatch):
    # 4 neurons: one chunk is the whole job of reverse mode (measured first), which is
    # timed whole; the other two are still measured, and the fastest is kept
    model, layers, shape = build("mlp", 0)
    model.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    reference = torch.randn(10, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layers["fc3"]).fit(reference)
    assert choose_mode(4, x[0].numel()) == "reverse"
    timed = scripted_times(monkeypatch, winning(winner))
    omega = insens.attribute(x, jacobian_vectors_per_chunk=chunk_size)
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == winner
    assert timed[0] == ("reverse", 4)
    assert {mode for mode, _ in timed} == set(MODES)
    torch.testing.assert_close(omega, reference_insens(model, layers["fc3"], x, reference))


def test_a_hopeless_strategy_is_left_out_after_its_scout(monkeypatch):
    # forward mode 100x slower per column than reverse mode per row: after its scout
    # (an eighth of a chunk of its 100 columns) it is not timed on a whole chunk
    model, layers, shape = build("cnn", 0)
    model.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layers["fc2"]).fit(
        torch.randn(10, *shape, dtype=torch.float64)
    )
    timed = scripted_times(monkeypatch, {"reverse": 1.0, "forward": 100.0, "loop": 1.0})
    insens.attribute(x, jacobian_vectors_per_chunk=16)
    forward_parts = [count for mode, count in timed if mode == "forward"]
    assert forward_parts == [16 // jacobian.SCOUT_PART]
    # the loop, as fast per row as reverse mode, passes its scout and is timed whole:
    # a tie, which the first measured wins
    assert [mode for mode, _ in timed].count("loop") == 2
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == "reverse"


@pytest.mark.parametrize("winner", MODES)
def test_the_first_call_equals_later_calls_and_the_forced_mode_bit_for_bit(winner, monkeypatch):
    # float32, default chunks: the measured chunks are the plan's, so the first call
    # gives the bits of every later call and of the chosen mode forced
    torch.manual_seed(0)
    model, layers, shape = build("cnn", 0)
    layer = layers["conv2"]
    x, reference = torch.randn(4, *shape), torch.randn(20, *shape)
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    scripted_times(monkeypatch, winning(winner))
    first = insens.attribute(x)
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == winner
    assert torch.equal(insens.attribute(x), first)
    assert torch.equal(insens.attribute(x, jacobian_mode=winner), first)


def test_a_strategy_is_estimated_from_the_faster_of_its_first_two_chunks(monkeypatch):
    # reverse mode (measured first on conv2: fewer units than input features) has a
    # slow first chunk, as where memory is touched for the first time: its second
    # chunk still makes it the choice over forward mode and the loop
    model, layers, shape = build("cnn", 2)
    model.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layers["conv2"]).fit(
        torch.randn(12, *shape, dtype=torch.float64)
    )
    assert choose_mode(conv2_units(model, x), x[0].numel()) == "reverse"
    reverse_parts: list[int] = []

    def fake_timed_advance(strategy, count):
        strategy.advance(strategy.done + count)
        if strategy.mode != "reverse":
            return 1.0 * count
        reverse_parts.append(count)
        return (100.0 if len(reverse_parts) == 1 else 1e-3) * count

    monkeypatch.setattr(jacobian, "timed_advance", fake_timed_advance)
    insens.attribute(x, jacobian_vectors_per_chunk=4)
    assert reverse_parts == [4, 4]
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == "reverse"


def test_a_slow_scout_is_read_again_before_the_strategy_is_left_out(monkeypatch):
    # reverse mode (measured first) takes 1 s a row; forward mode's first scout reads
    # its 100 columns at 10x reverse mode's job (within the margin's square), its
    # second at 1 ms a column: it is timed on whole chunks after all, and chosen
    model, layers, shape = build("cnn", 0)
    model.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layers["fc2"]).fit(
        torch.randn(10, *shape, dtype=torch.float64)
    )
    units = model.fc2.out_features
    assert choose_mode(units, x[0].numel()) == "reverse"
    forward_parts: list[int] = []

    def fake_timed_advance(strategy, count):
        strategy.advance(strategy.done + count)
        if strategy.mode != "forward":
            return 1.0 * count
        forward_parts.append(count)
        return (10.0 * units / 100 if len(forward_parts) == 1 else 1e-3) * count

    monkeypatch.setattr(jacobian, "timed_advance", fake_timed_advance)
    insens.attribute(x, jacobian_vectors_per_chunk=16)
    assert forward_parts == [2, 2, 16, 16]
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == "forward"
