"""Speed and memory of StepwiseSensitivity on the paper's CIFAR-size network.

The network (random weights, eval mode): 32x32x3 input, conv 3x3 64 -> ReLU ->
max-pool 2 -> conv 3x3 64 -> ReLU -> fc 328 -> ReLU -> fc 194 -> ReLU -> fc 10,
all five weighted layers listed, 100 inputs, target class 0. In one run this
script times:

- one forward + backward pass of the model on the batch (the gradient of the
  target logit with respect to the inputs; with parameter gradients as well);
- SSA in local mode (``branching=8, max_neurons=8``) and in global mode
  (``percentile=50``);
- the naive global computation: one Captum layer-gradient call (a forward and a
  backward pass) per upper neuron of the same graph, whose relevance matrices
  are checked equal to SSA's;

and, each in a fresh subprocess, the peak memory above the model and data.
Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_stepwise_sensitivity.py [--threads 1]

(``PYTHONPATH=.``: the script's own folder comes first on ``sys.path``, so an
installed ``captum_ssa`` would be imported rather than this checkout's.) With
``--ratios`` it prints only the interleaved medians and SSA's ratios to its
floor (one forward pass plus, per layer pair, one backward pass of the summed
upper activity) and to one forward+backward, skipping the naive loop and memory::

    PYTHONPATH=. python benchmarks/bench_stepwise_sensitivity.py --ratios --threads 1 --repeats 7

With ``--before PATH`` (another checkout of the repository) it times instead
SSA's local and global graphs of this checkout against that one's, in
alternating fresh processes on the same model and inputs, and prints the
ratios of the best and the median runs (new / old)::

    python benchmarks/bench_stepwise_sensitivity.py --before /tmp/old --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from captum.attr import LayerGradientXActivation
from torch import Tensor, nn

from captum_ssa import StepwiseSensitivity


class CifarNet(nn.Module):
    """The paper's Conv-Net: conv 3x3 64, max-pool, conv 3x3 64, fc 328, fc 194, fc 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.fc1 = nn.Linear(64 * 13 * 13, 328)
        self.fc2 = nn.Linear(328, 194)
        self.fc3 = nn.Linear(194, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x)).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    def layers(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.fc1, self.fc2, self.fc3]


def setup(batch: int, seed: int = 0) -> tuple[CifarNet, Tensor]:
    torch.manual_seed(seed)
    return CifarNet().eval(), torch.randn(batch, 3, 32, 32)


def tasks(model: CifarNet, x: Tensor, target: int) -> dict[str, Callable[[], object]]:
    ssa = StepwiseSensitivity(model, model.layers())

    def input_gradient() -> object:
        inputs = x.clone().requires_grad_()
        return torch.autograd.grad(model(inputs)[:, target].sum(), inputs)

    def all_gradients() -> object:
        inputs = x.clone().requires_grad_()
        model(inputs)[:, target].sum().backward()
        model.zero_grad(set_to_none=True)
        return None

    def floor() -> object:
        """SSA global's floor: one forward pass, and per layer pair one backward
        pass of the summed upper activity to the lower layer's output."""
        outputs: list[Tensor] = []
        handles = [
            layer.register_forward_hook(lambda _m, _a, out: outputs.append(out))
            for layer in model.layers()
        ]
        try:
            model(x.clone().requires_grad_())
        finally:
            for handle in handles:
                handle.remove()
        for lower, upper in zip(outputs[:-1], outputs[1:]):
            torch.autograd.grad(upper.sum(), lower, retain_graph=True)
        return None

    return {
        "forward+backward": input_gradient,
        "floor (forward + one backward per pair)": floor,
        "forward+backward (with parameter gradients)": all_gradients,
        "SSA local (branching=8, max_neurons=8)": lambda: ssa.attribute(
            x, target=target, mode="local", branching=8, max_neurons=8
        ),
        "SSA global (percentile=50)": lambda: ssa.attribute(x, target=target, percentile=50),
    }


def naive_global(model: CifarNet, x: Tensor, graph: object) -> list[Tensor]:
    """One Captum layer-gradient call per upper neuron of ``graph``: its Step II matrices."""
    # here, not at the top: a --before child imports an older checkout's package
    from captum_ssa._core.stepwise_sensitivity.segment import activity_function

    layers, names = model.layers(), graph.layer_names  # type: ignore[attr-defined]
    matrices = []
    for upper in range(len(layers) - 1, 0, -1):
        activity = activity_function(model, layers[upper], 1)
        layer_gradient = LayerGradientXActivation(
            activity, layers[upper - 1], multiply_by_inputs=False
        )
        rows = []
        for neuron in graph.neurons(names[upper]).tolist():  # type: ignore[attr-defined]
            gradient = layer_gradient.attribute(x, target=neuron)
            rows.append(gradient.abs().reshape(*gradient.shape[:2], -1).mean(2).mean(0))
        matrices.insert(0, torch.stack(rows))
    return matrices


def best_times(functions: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Every run's time of each function, interleaved so all see the same load."""
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for position, function in enumerate(functions):
            started = time.perf_counter()
            function()
            times[position].append(time.perf_counter() - started)
    return times


def memory_status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process. Unlike ``ru_maxrss``,
    the peak starts afresh at ``exec``, so a child does not inherit its parent's."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(batch: int, task: str, target: int) -> None:
    """In a fresh process: peak RSS above the model and data while running ``task``."""
    model, x = setup(batch)
    baseline = memory_status_mb("VmRSS")
    tasks(model, x, target)[task]()
    print(json.dumps({"extra_mb": memory_status_mb("VmHWM") - baseline}))


def memory_in_subprocess(batch: int, task: str, target: int) -> float:
    command = [sys.executable, __file__, "--memory-child", task, "--batch", str(batch)]
    command += ["--target", str(target)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["extra_mb"])


SSA_TASKS = ("SSA local (branching=8, max_neurons=8)", "SSA global (percentile=50)")


def time_child(batch: int, target: int, repeats: int) -> None:
    """In a fresh process: the best time of each SSA task over ``repeats`` runs."""
    model, x = setup(batch)
    named = tasks(model, x, target)
    best = {}
    for name in SSA_TASKS:
        named[name]()  # warm-up
        best[name] = min(best_times([named[name]], repeats)[0])
    print(json.dumps(best))


def compare_with(before: str, args: argparse.Namespace) -> None:
    """This checkout's SSA against ``before``'s, alternating fresh processes."""
    here = str(Path(__file__).resolve().parents[1])
    runs: dict[str, list[dict[str, float]]] = {here: [], before: []}
    command = [sys.executable, __file__, "--time-child", "--batch", str(args.batch)]
    command += ["--target", str(args.target), "--repeats", str(args.repeats)]
    command += ["--threads", str(args.threads or torch.get_num_threads())]
    for round_index in range(args.rounds):
        order = [here, before] if round_index % 2 == 0 else [before, here]
        for checkout in order:
            environment = {**os.environ, "PYTHONPATH": checkout}
            output = subprocess.run(
                command, capture_output=True, text=True, check=True, env=environment
            ).stdout
            runs[checkout].append(json.loads(output.strip().splitlines()[-1]))
    print(f"this checkout vs {before}, {args.rounds} rounds, best of {args.repeats} each")
    print(f"{'':40} {'new best':>9} {'old best':>9} {'best':>6} {'median':>7}")
    for name in SSA_TASKS:
        new = [run[name] for run in runs[here]]
        old = [run[name] for run in runs[before]]
        print(
            f"{name:40} {min(new):9.3f} {min(old):9.3f} {min(new) / min(old):6.2f} "
            f"{statistics.median(new) / statistics.median(old):7.2f}"
        )


def print_ratios(times: dict[str, list[float]], repeats: int) -> None:
    """Median of each interleaved task, and SSA's ratios to its floor and to one
    forward+backward (issue 19's targets: global <= 2x floor, local <= 1.6x)."""
    median = {name: statistics.median(runs) for name, runs in times.items()}
    print(f"\n{'':46} {'median s':>9} {'best s':>8}  ({repeats} interleaved runs)")
    for name, runs in times.items():
        print(f"{name:46} {median[name]:9.4f} {min(runs):8.4f}")
    step = median["forward+backward"]
    floor = median["floor (forward + one backward per pair)"]
    global_ = median["SSA global (percentile=50)"]
    local = median["SSA local (branching=8, max_neurons=8)"]
    print(f"\nglobal / floor:            {global_ / floor:6.2f}x  (target <= 2, goal 1.5)")
    print(f"global / forward+backward: {global_ / step:6.2f}x")
    print(f"local / forward+backward:  {local / step:6.2f}x  (target <= 1.6, goal 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--before", help="another checkout to time SSA against")
    parser.add_argument("--rounds", type=int, default=6, help="with --before")
    parser.add_argument(
        "--ratios", action="store_true", help="only the interleaved times and ratios (no memory)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--time-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        measure_memory(args.batch, args.memory_child, args.target)
        return
    if args.time_child:
        time_child(args.batch, args.target, args.repeats)
        return
    if args.before:
        compare_with(str(Path(args.before).resolve()), args)
        return

    model, x = setup(args.batch)
    print(
        f"CifarNet, {args.batch} inputs 3x32x32, target {args.target}, float32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    named = tasks(model, x, args.target)
    for function in named.values():
        function()  # warm-up
    times = dict(zip(named, best_times(list(named.values()), args.repeats)))
    if args.ratios:
        print_ratios(times, args.repeats)
        return

    graph = named["SSA global (percentile=50)"]()
    sizes = [len(graph.neurons(name)) for name in graph.layer_names]  # type: ignore[attr-defined]
    started = time.perf_counter()
    naive = naive_global(model, x, graph)
    naive_time = time.perf_counter() - started
    for lower, matrix in enumerate(naive):
        names = graph.layer_names  # type: ignore[attr-defined]
        ours = graph.relevance_matrix(names[lower + 1], names[lower])  # type: ignore[attr-defined]
        torch.testing.assert_close(ours, matrix, rtol=1e-4, atol=1e-7)

    memory = {name: memory_in_subprocess(args.batch, name, args.target) for name in named}
    print(f"\n{'':46} {'best s':>8} {'worst s':>8} {'peak MB':>8}")
    for name, runs in times.items():
        print(f"{name:46} {min(runs):8.3f} {max(runs):8.3f} {memory[name]:8.0f}")
    calls = sum(sizes[1:])
    print(f"{'naive global (' + str(calls) + ' layer-gradient calls, once)':46} {naive_time:8.3f}")
    print(f"  global graph sizes per layer (conv1..fc3): {sizes}; matrices equal to naive")

    step = min(times["forward+backward"])
    local = min(times["SSA local (branching=8, max_neurons=8)"])
    global_worst = max(times["SSA global (percentile=50)"])
    print(
        f"\nlocal / forward+backward:          {local / step:6.2f}x  (need <= 5; worst run "
        f"{max(times['SSA local (branching=8, max_neurons=8)']) / step:.2f}x)"
    )
    print(
        f"naive / global (global's worst run): {naive_time / global_worst:6.1f}x  (need >= 10; "
        f"best run {naive_time / min(times['SSA global (percentile=50)']):.1f}x)"
    )


if __name__ == "__main__":
    main()
