"""Per-example targets are read by one gather: the same values and gradients as
Captum's ``_select_targets`` on every form it takes, the same results as the
stacked selection SwitchedLinearProjection used before, and a backward graph
that does not grow with the batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from captum_ssa import SwitchedLinearProjection
from captum_ssa._core.switched_linear_projection import neuron_selection
from captum_ssa._core.switched_linear_projection.neuron_selection import (
    _select_targets_by_gather,
    select_neuron,
)
from captum_ssa._utils._compat import _select_targets
from tests.models import build, layer_output

CONV = (4, 5, 3, 2)  # N, C, H, W of the conv-shaped outputs below


def conv_output(batch: int = CONV[0], contiguous: bool = True) -> Tensor:
    generator = torch.Generator().manual_seed(batch)
    values = torch.randn(batch, *CONV[1:], generator=generator, dtype=torch.float64)
    if not contiguous:  # the same values laid out channels-last
        values = values.contiguous(memory_format=torch.channels_last)
    return values.requires_grad_()


def linear_output(batch: int = 4) -> Tensor:
    generator = torch.Generator().manual_seed(batch + 100)
    return torch.randn(batch, 6, generator=generator, dtype=torch.float64).requires_grad_()


def selection_and_gradient(select: Any, output: Tensor, target: Any) -> tuple[Tensor, Tensor]:
    selected = select(output, target)
    weights = torch.arange(1.0, selected.numel() + 1, dtype=selected.dtype).reshape(selected.shape)
    (gradient,) = torch.autograd.grad((selected * weights).sum(), output)
    return selected.detach(), gradient


# Every form Captum's _select_targets takes, on an output it takes it for, with
# negative indices wherever Python's indexing (and so Captum's) reads them.
CAPTUM_FORMS = {
    "int": (linear_output, 2),
    "negative int": (linear_output, -1),
    "int on conv": (conv_output, 3),
    "tuple": (conv_output, (1, 2, 0)),
    "negative tuple": (conv_output, (-1, 0, -2)),
    "short tuple": (conv_output, (4, 1)),
    "tuple with a slice": (conv_output, (slice(1, 3), 0, 1)),
    "0-dim tensor": (linear_output, torch.tensor(5)),
    "one-element tensor": (linear_output, torch.tensor([4])),
    "tensor per example": (linear_output, torch.tensor([0, 5, 2, 2])),
    "list of ints": (linear_output, [5, 0, 0, 3]),
    "list of tuples": (conv_output, [(4, 0, 1), (0, 2, 1), (4, 2, 0), (1, 1, 1)]),
    "negative tuples": (conv_output, [(-1, 0, -1), (-5, -3, 1), (4, -1, -2), (0, 1, 0)]),
    "tuples of NumPy ints": (conv_output, [tuple(np.int64(i) for i in (3, 2, 1))] * 4),
    "tuples on a linear output": (linear_output, [(5,), (-6,), (0,), (3,)]),
    "short tuples": (conv_output, [(4, 0), (0, 2), (4, 2), (1, 1)]),
    "tuples with a slice": (conv_output, [(4, slice(None), 1)] * 4),
    "tuples with 0-dim tensors": (conv_output, [(torch.tensor(i), 1, 0) for i in range(4)]),
    "one example": (lambda: conv_output(1), [(2, 1, 1)]),
    "channels-last output": (lambda: conv_output(contiguous=False), [(4, 0, 1), (0, 2, 1)] * 2),
}


@pytest.mark.parametrize(("make_output", "target"), CAPTUM_FORMS.values(), ids=CAPTUM_FORMS)
def test_the_gather_selects_what_captum_selects_with_the_same_gradient(make_output, target):
    output = make_output()
    expected, expected_gradient = selection_and_gradient(_select_targets, output, target)
    selected, gradient = selection_and_gradient(_select_targets_by_gather, output, target)
    assert selected.shape == expected.shape
    assert torch.equal(selected, expected)
    assert torch.equal(gradient, expected_gradient)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_per_example_tuples_select_what_captum_selects(data):
    """Any shape, any index Python's indexing takes (negative included), any batch."""
    neuron_shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4), label="shape")
    batch = data.draw(st.integers(1, 6), label="batch")
    target = [
        tuple(data.draw(st.integers(-size, size - 1)) for size in neuron_shape)
        for _ in range(batch)
    ]
    output = torch.randn(batch, *neuron_shape, dtype=torch.float64, requires_grad=True)
    expected = selection_and_gradient(_select_targets, output, target)
    selected = selection_and_gradient(_select_targets_by_gather, output, target)
    assert torch.equal(selected[0], expected[0]) and torch.equal(selected[1], expected[1])


def test_a_layer_with_one_value_per_example_takes_empty_tuples_as_captum_does():
    output = torch.randn(3, dtype=torch.float64, requires_grad=True)
    target: list[tuple[int, ...]] = [(), (), ()]
    expected = selection_and_gradient(_select_targets, output, target)
    selected = selection_and_gradient(_select_targets_by_gather, output, target)
    assert torch.equal(selected[0], expected[0]) and torch.equal(selected[1], expected[1])


def readers_of(selected: Tensor, output: Tensor) -> int:
    """How many autograd nodes between ``selected`` and ``output`` read ``output``:
    the backward writes a gradient the size of the whole output for each."""
    seen, pending, readers = set(), [selected.grad_fn], 0
    while pending:
        node = pending.pop()
        if node is None or node in seen or node is output.grad_fn:
            continue
        seen.add(node)
        next_nodes = [next_node for next_node, _ in node.next_functions]
        readers += any(next_node is output.grad_fn for next_node in next_nodes)
        pending.extend(next_nodes)
    return readers


@pytest.mark.parametrize("batch", [1, 2, 16])
def test_per_example_selections_read_the_layer_output_once(batch):
    """The stacked selection read it once per example, N output-sized gradients in the
    backward (the timings are in benchmarks/bench_switched_linear_projection.py)."""
    output = torch.randn(batch, *CONV[1:], requires_grad=True) * 1  # not a leaf
    target = [(i % CONV[1], 1, 0) for i in range(batch)]
    assert readers_of(_select_targets_by_gather(output, target), output) == 1
    assert readers_of(_select_targets(output, target), output) == batch  # the check can fail
    per_example = select_neuron(output, None, lambda out: out.sum())
    assert readers_of(per_example, output) == 1
    sliced = torch.stack([output[i : i + 1].sum() for i in range(batch)])
    assert readers_of(sliced, output) == batch


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([(1, 0, 0)] * 3, "lists 3 entries for 4 examples"),
        ([(1, 0, 0)] * 5, "lists 5 entries for 4 examples"),
        ([0, 1, 2], "lists 3 entries for 4 examples"),
        (torch.tensor([0, 1, 2]), r"target tensor\(\[0, 1, 2\]\) does not select"),
        ([(1, 0, 0), (5, 0, 0), (0, 0, 0), (0, 0, 0)], r"example 1's index \(5, 0, 0\)"),
        ([(1, 0, 0), (0, 0, 0), (0, -5, 0), (0, 0, 0)], r"example 2's index \(0, -5, 0\)"),
        ([(1, 0, 0), (0, 0, 2**70), (0, 0, 0), (0, 0, 0)], "example 1.s index"),
        ([torch.tensor([1, 0, 0])] * 4, "does not select"),
        ([(1, 0, 0), 2, (0, 0, 0), (0, 0, 0)], "does not select"),
    ],
    ids=[
        "short list",
        "long list",
        "short list of ints",
        "short tensor",
        "out of range",
        "negative out of range",
        "beyond int64",
        "list of tensors",
        "mixed list",
    ],
)
def test_wrong_per_example_targets_get_clear_errors(target, message):
    model, layers, shape = build("cnn", 1)
    slp = SwitchedLinearProjection(model, layers["conv2"])
    with pytest.raises(ValueError, match=message):
        slp.attribute(torch.randn(4, *shape), target)


def test_a_list_of_tensors_is_refused_as_captum_refuses_it():
    with pytest.raises(AssertionError, match="Target element type"):
        _select_targets(linear_output(), [torch.tensor(i) for i in range(4)])
    model, layers, shape = build("cnn", 1)
    slp = SwitchedLinearProjection(model, layers["fc1"])
    with pytest.raises(ValueError, match="Target element type"):
        slp.attribute(torch.randn(4, *shape), [torch.tensor(i) for i in range(4)])


# --- the same results as the stacked selection used before ---------------------------


SLP_FORMS = {
    "conv tuples": ("conv2", [(4, 0, 3), (1, 2, 2), (0, 3, 1), (2, 1, 0), (3, 3, 3)]),
    "conv negative tuples": ("conv2", [(-1, 0, -1), (1, -4, 2), (0, 3, -4), (-5, 1, 0), (0, 0, 0)]),
    "conv tuple": ("conv2", (2, -1, 1)),
    "linear tuples": ("fc1", [(5,), (0,), (-6,), (2,), (1,)]),
    "list of ints": ("fc1", [5, 0, 0, 2, 1]),
    "tensor": ("fc2", torch.tensor([2, 0, 1, 1, 0])),
    "int": ("fc2", 1),
    "NumPy int": ("fc2", np.int64(-1)),
}


def attribute_all(slp: SwitchedLinearProjection, x: Tensor, target: Any) -> list[Any]:
    """Every SwitchedLinearProjection entry point that selects with ``target``."""
    projection = slp.project(x, target)
    return [
        slp.attribute(x, target, return_convergence_delta=True),
        slp.attribute(x, target, baselines=0.25, return_convergence_delta=True),
        tuple(projection),
        slp.compute_convergence_delta(projection.weights, 0.0, x, target=target),
    ]


@pytest.mark.parametrize(("layer", "target"), SLP_FORMS.values(), ids=SLP_FORMS)
def test_results_equal_the_stacked_selection_used_before(monkeypatch, layer, target):
    model, layers, shape = build("cnn_bn", 3)
    x = torch.randn(5, *shape)
    slp = SwitchedLinearProjection(model, layers[layer], multiply_by_inputs=True)
    results = attribute_all(slp, x, target)
    monkeypatch.setattr(neuron_selection, "_select_targets_by_gather", _select_targets)
    before = attribute_all(slp, x, target)
    torch.testing.assert_close(results, before, rtol=0, atol=0)


def test_per_example_tuples_equal_one_call_per_example_and_the_plain_gradient():
    model, layers, shape = build("cnn", 7)
    x = torch.randn(6, *shape)
    units = [(4, 0, 3), (1, 2, 2), (0, 3, 1), (-1, -1, -1), (2, 0, 0), (4, 0, 3)]
    slp = SwitchedLinearProjection(model, layers["conv2"])
    one_by_one = torch.cat([slp.attribute(x[i : i + 1], unit) for i, unit in enumerate(units)])
    leaf = x.clone().requires_grad_()
    output = layer_output(model, layers["conv2"], leaf)
    selected = torch.stack([output[(i, *unit)] for i, unit in enumerate(units)])
    (plain,) = torch.autograd.grad(selected.sum(), leaf)
    weights = slp.attribute(x, units)
    torch.testing.assert_close(weights, one_by_one)
    torch.testing.assert_close(weights, plain)


def test_noise_tunnel_repeats_per_example_tuples_as_for_the_stacked_selection(monkeypatch):
    model, layers, shape = build("cnn", 8)
    x = torch.randn(3, *shape)
    units = [(4, 0, 3), (1, 2, 2), (0, 3, 1)]
    tunnel = NoiseTunnel(SwitchedLinearProjection(model, layers["conv2"]))

    def smoothed() -> Tensor:
        torch.manual_seed(0)
        return tunnel.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.2, target=units)

    result = smoothed()
    monkeypatch.setattr(neuron_selection, "_select_targets_by_gather", _select_targets)
    torch.testing.assert_close(result, smoothed(), rtol=0, atol=0)
