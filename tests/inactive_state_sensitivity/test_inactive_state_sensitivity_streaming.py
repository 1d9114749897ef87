"""Insens fit over a stream: the counts of a plain loop, whatever the batching."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from captum_ssa._core.inactive_state_sensitivity import InactiveStateSensitivity
from tests.models import build


def plain_active_counts(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor):
    """m_i by looping over the examples and the neurons, one at a time."""
    outputs = []
    handle = layer.register_forward_hook(lambda _m, _a, out: outputs.append(out.clone()))
    try:
        with torch.no_grad():
            for example in x:
                model(example[None])
    finally:
        handle.remove()
    counts = torch.zeros(outputs[0].shape[1:], dtype=torch.int64).flatten()
    for output in outputs:
        for neuron, value in enumerate(output.flatten().tolist()):
            counts[neuron] += int(value > 0)
    return counts.reshape(outputs[0].shape[1:])


def test_counts_over_an_uneven_loader_equal_a_plain_loop_and_one_batch() -> None:
    model, layers, shape = build("cnn")
    x = torch.randn(37, *shape, generator=torch.Generator().manual_seed(3))
    labels = torch.zeros(37, dtype=torch.long)
    chosen = [layers["conv1"], layers["conv2"], layers["fc1"]]
    streamed = InactiveStateSensitivity(model, chosen).fit(
        DataLoader(TensorDataset(x, labels), batch_size=10), show_progress=True
    )
    one_batch = InactiveStateSensitivity(model, chosen).fit(x)
    assert streamed.reference_size == one_batch.reference_size == 37
    for layer, from_stream, from_batch in zip(
        chosen, streamed._fitted_counts(), one_batch._fitted_counts()
    ):
        assert torch.equal(from_stream, from_batch)
        assert torch.equal(from_stream, plain_active_counts(model, layer, x))
    for a, b in zip(streamed.activation_frequency, one_batch.activation_frequency):
        assert torch.equal(a, b)
    example = x[:2]
    # one strategy for both: "auto" measures per explainer, and two strategies agree
    # only up to rounding
    for a, b in zip(
        streamed.attribute(example, jacobian_mode="reverse"),
        one_batch.attribute(example, jacobian_mode="reverse"),
    ):
        assert torch.equal(a, b)
