"""Speed of SwitchedLinearProjection with one target per example, and of the
dependency graph's edge check.

The paper's 2CONV network (1x28x28 -> conv 5x5 32 -> ReLU -> max-pool 2 -> conv
5x5 64 -> ReLU -> max-pool 2 -> fc 128 -> ReLU -> fc 10, random weights, eval
mode, inputs in [0, 1)). For a conv layer and one random unit ``(c, h, w)`` per
example (Captum's list of tuples), at each batch size, this script times,
interleaved in one run (medians):

- the floor: one forward pass of the model (the layer output caught by a hook),
  one gather of each example's unit, one backward pass to the inputs;
- ``SwitchedLinearProjection.attribute(x, target=units)``, which selects the
  units with one gather;
- the same call with the selection it used before, Captum's
  ``_select_targets``, which stacks one indexing per example (each writes a
  gradient the size of the whole layer output in the backward pass); its
  weights are checked equal to the gathered ones.

Then the check :class:`~captum_ssa.graph.DependencyGraph` makes on its edges
(no (lower, upper) pair twice): ``unique(dim=0)`` as before against
``unique_pairs`` (one int64 key per pair), on random edge sets, on the CPU where
a graph keeps its edges. Run from the repository root::

    python benchmarks/bench_switched_linear_projection.py --threads 1
    python benchmarks/bench_switched_linear_projection.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from captum_ssa import SwitchedLinearProjection
from captum_ssa._core.switched_linear_projection import neuron_selection
from captum_ssa._utils._compat import _select_targets
from captum_ssa.graph._parts import unique_pairs

GATHERED = neuron_selection._select_targets_by_gather


class TwoConv(nn.Module):
    """The paper's 2CONV network for 28x28 grey images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def synchronize() -> None:
    """Wait for queued CUDA work, so that a time covers what it launched."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_times(functions: list[Callable[[], object]], repeats: list[int]) -> list[float]:
    """Median of ``repeats[i]`` runs of function i, interleaved so that all of them see
    the same load on a shared machine."""
    times: list[list[float]] = [[] for _ in functions]
    for round_ in range(max(repeats)):
        for position, function in enumerate(functions):
            if round_ < repeats[position]:
                synchronize()
                started = time.perf_counter()
                function()
                synchronize()
                times[position].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def random_units(shape: tuple[int, ...], batch: int, seed: int) -> list[tuple[int, ...]]:
    generator = torch.Generator().manual_seed(seed)
    columns = [torch.randint(0, size, (batch,), generator=generator) for size in shape]
    return [tuple(int(column[i]) for column in columns) for i in range(batch)]


def floor(model: nn.Module, layer: nn.Module, x: Tensor, units: list) -> Tensor:
    """One forward, one gather of each example's unit, one backward."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    inputs = x.clone().requires_grad_()
    try:
        model(inputs)
    finally:
        handle.remove()
    (output,) = captured
    flat = torch.tensor(units) @ torch.tensor(output.contiguous().stride()[1:])
    flat = flat.to(output.device)
    selected = output.reshape(len(x), -1).gather(1, flat[:, None])
    return torch.autograd.grad(selected.sum(), inputs)[0]


def old_selection(call: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``call`` with the selection SwitchedLinearProjection used before: Captum's."""

    def with_captum() -> Tensor:
        neuron_selection._select_targets_by_gather = _select_targets  # type: ignore[assignment]
        try:
            return call()
        finally:
            neuron_selection._select_targets_by_gather = GATHERED

    return with_captum


def layer_shape(model: nn.Module, layer: nn.Module) -> tuple[int, ...]:
    """One example's layer output shape."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.append(output))
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
    handle.remove()
    return tuple(captured[0].shape[1:])


def time_batch(
    model: nn.Module, layer: nn.Module, batch: int, args: argparse.Namespace
) -> list[float]:
    """Median seconds of the floor, the gathered selection and the old one."""
    slp = SwitchedLinearProjection(model, layer)
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    x = x.to(args.device)
    units = random_units(layer_shape(model, layer), batch, seed=batch)
    new = partial(slp.attribute, x, target=units)
    old = old_selection(new)
    plain = partial(floor, model, layer, x, units)
    torch.testing.assert_close(new(), old(), rtol=0, atol=0)
    torch.testing.assert_close(new(), plain())
    return median_times([plain, new, old], [args.repeats, args.repeats, args.old_repeats])


def per_example_targets(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    model = TwoConv().eval().to(args.device)
    print(
        f"{'layer':6} {'batch':>5} {'floor ms':>9} {'SLP ms':>9} {'old ms':>9} "
        f"{'SLP/floor':>9} {'old/floor':>9} {'old/SLP':>8}"
    )
    for name in args.layers:
        medians = {}
        for batch in args.batches:
            medians[batch] = floor_t, new_t, old_t = time_batch(
                model, getattr(model, name), batch, args
            )
            print(
                f"{name:6} {batch:5d} {floor_t * 1e3:9.1f} {new_t * 1e3:9.1f} "
                f"{old_t * 1e3:9.1f} {new_t / floor_t:9.2f} {old_t / floor_t:9.2f} "
                f"{old_t / new_t:8.1f}"
            )
        small = min(args.batches)
        for large in sorted(args.batches)[1:]:
            growth = [medians[large][i] / medians[small][i] for i in range(3)]
            print(
                f"{name:6} time {large} / {small} examples: floor {growth[0]:.1f}, "
                f"SLP {growth[1]:.1f}, old {growth[2]:.1f}"
            )
        if 32 in medians and 256 in medians:  # the targets of issue 19
            ratio = medians[256][1] / medians[256][0]
            growth_32_256 = medians[256][1] / medians[32][1]
            print(
                f"{name:6} targets: SLP/floor at 256 = {ratio:.2f} (<= 3: "
                f"{'met' if ratio <= 3 else 'MISSED'}); SLP 256/32 = {growth_32_256:.1f} "
                f"(<= 12: {'met' if growth_32_256 <= 12 else 'MISSED'})"
            )


def edge_check(args: argparse.Namespace) -> None:
    print(f"\n{'edges':>8} {'unique(dim=0) ms':>17} {'unique_pairs ms':>16} {'speed-up':>9}")
    generator = torch.Generator().manual_seed(0)
    for count in args.edges:
        pairs = torch.stack(
            [
                torch.randint(0, 4096, (count,), generator=generator),
                torch.randint(0, 1024, (count,), generator=generator),
            ],
            1,
        )
        assert torch.equal(unique_pairs(pairs), pairs.unique(dim=0))
        old_t, new_t = median_times(
            [partial(torch.unique, pairs, dim=0), partial(unique_pairs, pairs)],
            [args.repeats] * 2,
        )
        print(f"{count:8d} {old_t * 1e3:17.2f} {new_t * 1e3:16.3f} {old_t / new_t:8.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", default=["conv2", "conv1"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--old-repeats", type=int, default=3)
    parser.add_argument("--edges", nargs="+", type=int, default=[1_000, 15_900, 100_000])
    parser.add_argument("--device", default="cpu", help="e.g. cuda (absolute times there)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.device}")
    per_example_targets(args)
    edge_check(args)


if __name__ == "__main__":
    main()
