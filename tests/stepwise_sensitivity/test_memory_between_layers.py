"""The memory budget bounds what lies between the listed layers: a hidden layer much
wider than the listed ones is what one forward pass's graph holds, and SSA reads
the examples in pieces small enough for it (measured by the tensors autograd saves,
not by process memory), with the same graph as when it reads them whole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor, nn

from captum_ssa import StepwiseSensitivity, memory_budget
from captum_ssa._core.stepwise_sensitivity.network import Network
from captum_ssa._utils.memory_budget import SavedTensorBytes


class WideBetween(nn.Module):
    """Narrow listed layers (2 channels) with a 128-channel conv between them."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow_in = nn.Conv2d(1, 2, 3, padding=1)
        self.wide = nn.Conv2d(2, 128, 3, padding=1)
        self.narrow_out = nn.Conv2d(128, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.relu(self.wide(torch.relu(self.narrow_in(x))))
        return self.fc(torch.relu(self.narrow_out(hidden)).flatten(1))


def graph_of(model: WideBetween, x: Tensor, **kwargs):
    layers = [model.narrow_in, model.narrow_out, model.fc]
    return StepwiseSensitivity(model, layers).attribute(x, target=1, percentile=50, **kwargs)


def test_the_graph_of_a_forward_pass_stays_within_the_budget_and_the_graph_is_unchanged(
    monkeypatch,
):
    torch.manual_seed(0)
    model = WideBetween().double().eval()
    x = torch.randn(32, 1, 8, 8, dtype=torch.float64)
    whole = graph_of(model, x)

    budget = 2**20
    saved_per_capture: list[int] = []
    capture = Network.capture

    def counted(self, inputs, mask=None, depth=None):
        with SavedTensorBytes() as saved:
            result = capture(self, inputs, mask, depth)
        if torch.is_grad_enabled():
            saved_per_capture.append(saved.total)
        return result

    monkeypatch.setattr(Network, "capture", counted)
    with memory_budget(budget):
        pieces = graph_of(model, x)
    # the whole batch's graph would not fit: 32 x 2 x 64 KiB of hidden activations
    assert len(saved_per_capture) > 3 and max(saved_per_capture) <= budget
    for name in whole.layer_names:
        assert torch.equal(pieces.neurons(name), whole.neurons(name))
        torch.testing.assert_close(
            pieces.relevance(name), whole.relevance(name), atol=1e-12, rtol=0
        )
    names = whole.layer_names
    for upper, lower in zip(names[1:], names[:-1]):
        assert torch.equal(pieces.edges(upper, lower), whole.edges(upper, lower))
        torch.testing.assert_close(
            pieces.relevance_matrix(upper, lower),
            whole.relevance_matrix(upper, lower),
            atol=1e-12,
            rtol=0,
        )


def test_saved_tensor_bytes_count_each_storage_once_and_leave_gradients_alone():
    x = torch.randn(100, dtype=torch.float64, requires_grad=True)
    with SavedTensorBytes() as saved:
        y = (x * x).sum()  # x saved twice, one storage
    assert saved.total == saved.widest == 800
    (gradient,) = torch.autograd.grad(y, x)
    torch.testing.assert_close(gradient, 2 * x.detach())


class ScaledPerExample(WideBetween):
    """WideBetween whose inputs are scaled by a per-example additional argument."""

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x * scale[:, None, None, None])


def test_batch_shaped_additional_arguments_and_training_mode_batch_norm_still_work():
    # the budget's measurement runs two and three examples: it is left out where an
    # additional argument is shaped like the batch, and a batch norm in training mode
    # (which refuses one example) takes two
    torch.manual_seed(0)
    model = ScaledPerExample().double().eval()
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    scale = torch.rand(6, dtype=torch.float64) + 0.5
    graph = graph_of(model, x, additional_forward_args=(scale,))
    plain = WideBetween().double().eval()
    plain.load_state_dict(model.state_dict())
    expected = graph_of(plain, x * scale[:, None, None, None])
    for name in graph.layer_names:
        assert torch.equal(graph.neurons(name), expected.neurons(name))
        torch.testing.assert_close(graph.relevance(name), expected.relevance(name))

    norm = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    layers = [norm[0], norm[3]]
    inputs = torch.randn(5, 4, dtype=torch.float64)
    graph = StepwiseSensitivity(norm, layers).attribute(inputs, target=0)
    assert graph.neurons(graph.layer_names[-1]).tolist() == [0]


class WideBelow(nn.Module):
    """A 128-channel conv below the lowest listed layer (``top.narrow_in``), and narrow
    layers above it: SSA's gradients only read what lies above ``narrow_in``."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(1, 128, 3, padding=1)
        self.top = nn.Module()
        self.top.narrow_in = nn.Conv2d(128, 2, 3, padding=1)
        self.top.narrow_out = nn.Conv2d(2, 2, 3, padding=1)
        self.top.fc = nn.Linear(2 * 8 * 8, 3)
        self.top.forward = lambda hidden: self.top.fc(  # type: ignore[method-assign]
            torch.relu(self.top.narrow_out(torch.relu(self.top.narrow_in(hidden)))).flatten(1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.top(torch.relu(self.wide(x)))


def test_nothing_below_the_lowest_listed_layer_is_recorded(monkeypatch):
    torch.manual_seed(0)
    model = WideBelow().double().eval()
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    hidden_bytes = 8 * 128 * 8 * 8 * 8  # the wide conv's output (and its ReLU's)
    saved_per_capture: list[int] = []
    capture = Network.capture

    def counted(self, inputs, mask=None, depth=None):
        with SavedTensorBytes() as saved:
            result = capture(self, inputs, mask, depth)
        saved_per_capture.append(saved.total)
        return result

    monkeypatch.setattr(Network, "capture", counted)
    top = model.top
    layers = [top.narrow_in, top.narrow_out, top.fc]
    below = StepwiseSensitivity(model, layers).attribute(x, target=1, percentile=50)
    # ReLU saves its output: the wide part's graph alone would be 64 KiB per example
    assert saved_per_capture and max(saved_per_capture) < hidden_bytes / 2
    # the same graph as SSA on the layers above, fed the wide part's output
    with torch.no_grad():
        hidden = torch.relu(model.wide(x))
    above = StepwiseSensitivity(top, layers).attribute(hidden, target=1, percentile=50)
    for name, other in zip(below.layer_names, above.layer_names):
        assert torch.equal(below.neurons(name), above.neurons(other))
        torch.testing.assert_close(below.relevance(name), above.relevance(other))


class LowestInWorkerThread(WideBelow):
    """WideBelow whose wide conv and lowest listed layer run in a worker thread (where
    gradients are enabled), the layers above in the caller's thread."""

    def forward(self, x: Tensor) -> Tensor:
        with ThreadPoolExecutor(1) as pool:
            lowest = pool.submit(lambda: self.top.narrow_in(torch.relu(self.wide(x)))).result()
        narrow_out = self.top.narrow_out(torch.relu(lowest))
        return self.top.fc(torch.relu(narrow_out).flatten(1))


def test_a_lowest_layer_in_a_worker_thread_gives_the_eager_graph():
    # the caller's thread runs without gradients until the lowest layer: a forward pass
    # that runs it elsewhere is run again with the whole graph
    torch.manual_seed(0)
    threaded = LowestInWorkerThread().double().eval()
    eager = WideBelow().double().eval()
    eager.load_state_dict(threaded.state_dict())
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    graphs = [
        StepwiseSensitivity(
            model, [model.top.narrow_in, model.top.narrow_out, model.top.fc]
        ).attribute(x, target=1, percentile=50)
        for model in (threaded, eager)
    ]
    for name in graphs[1].layer_names:
        assert torch.equal(graphs[0].neurons(name), graphs[1].neurons(name))
        torch.testing.assert_close(graphs[0].relevance(name), graphs[1].relevance(name))
    assert torch.is_grad_enabled()  # the caller's mode, restored
