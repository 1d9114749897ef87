"""Insens's Jacobian strategies (forward, reverse, the per-neuron loop) and the
measured choice between them: every strategy gives the plain reference's Omega,
and the automatic choice follows the measured times (injected here, never read
from the wall clock)."""

from __future__ import annotations

from collections.abc import Iterator

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


def scripted_clock(elapsed: list[float]) -> Iterator[float]:
    """A clock read twice per timed strategy, ``elapsed[i]`` apart for the i-th."""
    now = 0.0
    for seconds in elapsed:
        yield now
        now += seconds
        yield now


def order_measured(units: int, features: int) -> list[str]:
    first = choose_mode(units, features)
    return [first, "reverse" if first == "forward" else "forward", "loop"]


@pytest.mark.parametrize("winner", MODES)
def test_the_automatic_choice_follows_the_measured_times_and_is_kept(winner, monkeypatch):
    model, layers, shape = build("cnn", 2)
    model.double()
    layer = layers["conv2"]
    x = torch.randn(2, *shape, dtype=torch.float64)
    reference = torch.randn(12, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    with torch.no_grad():
        units = model.conv2(model.pool1(torch.relu(model.conv1(x[:1]))))[0].numel()
    order = order_measured(units, x[0].numel())
    clock = scripted_clock([1e-9 if mode == winner else 1.0 for mode in order])
    monkeypatch.setattr(jacobian, "_clock", lambda: next(clock))
    omega = insens.attribute(x, jacobian_vectors_per_chunk=2)
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == winner and plan.chunk_size == (1 if winner == "loop" else 2)
    torch.testing.assert_close(omega, reference_insens(model, layer, x, reference))
    # a later call of the same shapes reuses the plan: the clock is not read again
    # (the scripted one is exhausted and would raise)
    torch.testing.assert_close(insens.attribute(x, jacobian_vectors_per_chunk=2), omega)
    # other shapes are measured again
    clock = scripted_clock([1.0, 1.0, 1.0])
    insens.attribute(x[:1], jacobian_vectors_per_chunk=2)
    assert len(insens._jacobian_plans) == 2


def test_same_times_give_the_same_choice_and_ties_go_to_the_first_measured():
    times = {"forward": 2.0, "reverse": 1.0, "loop": 1.0}
    assert fastest(times) == fastest(dict(times)) == "reverse"
    assert fastest({"loop": 1.0, "reverse": 1.0}) == "loop"


def test_a_job_is_estimated_from_its_chunks():
    # 2 s for a whole chunk of 10 of 95 columns: 10 chunks
    assert estimated_time(2.0, 10, 10, 95) == pytest.approx(20.0)
    # the loop: 4 rows timed in 1 s, 100 rows
    assert estimated_time(1.0, 4, 1, 100) == pytest.approx(25.0)
    # a short last chunk is scaled up to a whole one
    assert estimated_time(1.0, 5, 10, 30) == pytest.approx(6.0)


def test_a_job_finished_while_measured_is_kept_as_it_is(monkeypatch):
    # a layer of 4 neurons over 1 chunk: the first strategy finishes at once
    model, layers, shape = build("mlp", 0)
    x = torch.randn(2, *shape)
    reference = torch.randn(10, *shape)
    insens = InactiveStateSensitivity(model, layers["fc3"]).fit(reference)
    reads = []
    monkeypatch.setattr(jacobian, "_clock", lambda: reads.append(1) or 0.0)
    omega = insens.attribute(x, jacobian_vectors_per_chunk=1000)
    assert not reads
    torch.testing.assert_close(omega, reference_insens(model, layers["fc3"], x, reference))


@pytest.mark.parametrize("winner", MODES)
def test_a_chunk_that_would_finish_the_job_leaves_the_others_measured(winner, monkeypatch):
    # default chunks, 4 neurons: after the sizing row one chunk would finish every
    # strategy; each is timed on a part, so the kept plan is the measured fastest
    model, layers, shape = build("mlp", 0)
    model.double()
    x = torch.randn(2, *shape, dtype=torch.float64)
    reference = torch.randn(10, *shape, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layers["fc3"]).fit(reference)
    order = order_measured(4, x[0].numel())
    clock = scripted_clock([1e-9 if mode == winner else 1.0 for mode in order])
    monkeypatch.setattr(jacobian, "_clock", lambda: next(clock))
    omega = insens.attribute(x)
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == winner
    assert next(clock, None) is None  # all three strategies were timed
    torch.testing.assert_close(omega, reference_insens(model, layers["fc3"], x, reference))


@pytest.mark.parametrize("winner", MODES)
def test_the_first_call_equals_later_calls_bit_for_bit(winner, monkeypatch):
    # float32, default chunks: the measured chunks' boundaries must not change the
    # rounding of the result the plan then gives on every later call
    torch.manual_seed(0)
    model, layers, shape = build("cnn", 0)
    layer = layers["conv2"]
    x, reference = torch.randn(4, *shape), torch.randn(20, *shape)
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    with torch.no_grad():
        units = model.conv2(model.pool1(torch.relu(model.conv1(x[:1]))))[0].numel()
    clock = scripted_clock(
        [1e-9 if mode == winner else 1.0 for mode in order_measured(units, x[0].numel())]
    )
    monkeypatch.setattr(jacobian, "_clock", lambda: next(clock))
    first = insens.attribute(x)
    (plan,) = insens._jacobian_plans.values()
    assert plan.mode == winner
    assert torch.equal(insens.attribute(x), first)
