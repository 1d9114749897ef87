"""Time and memory of ``neuron_examples`` on the digits CNN (the page's "what each
neuron responds to").

The tutorial's digits CNN (``tutorials/digits.py``, trained as in the demo) and
its class-3 dependency graph from StepwiseSensitivity on the training digits;
``neuron_examples`` then reads all 1,797 digits (training and test, a
``DataLoader`` of 256) once, and the same digits repeated 10 times (17,970
examples, the batches made on the fly), for memory flat in the dataset size.

Each case runs in a fresh subprocess on 1 torch thread, with the resident memory
sampled every millisecond: "peak MiB" is its peak above the memory before the
call (data, model and graph already there). Printed ratios: the call over one
plain forward pass over the same batches without gradients, and the share of the
SwitchedLinearProjection patterns (timed by wrapping ``find_patterns``). Run from
the repository root::

    python benchmarks/bench_neuron_examples.py [--repeats 5]

``--views`` times instead, interleaved in this process, a page's three views (the
class graphs of 3 and 8 and their shared subgraph) over the 450 test digits: one
``neuron_examples`` call per view against ``neuron_examples_of_graphs`` (one pass for
all, what ``graphs_to_html(examples=)`` does), and checks that they agree.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tutorials"))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The peak resident memory above the level at entry, sampled every millisecond."""

    def __enter__(self) -> PeakMemory:
        self.start = resident_bytes()
        self.peak = self.start
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())

    @property
    def above_start_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def batches(x: torch.Tensor, times: int, size: int = 256) -> Iterator[torch.Tensor]:
    for _ in range(times):
        yield from x.split(size)


class Repeated:
    """The digits ``times`` times over, as a re-iterable stream of batches."""

    def __init__(self, x: torch.Tensor, times: int) -> None:
        self.x, self.times = x, times

    def __iter__(self) -> Iterator[torch.Tensor]:
        return batches(self.x, self.times)


def case(times: int) -> dict[str, Any]:
    """One measurement, in this process: the call on the digits ``times`` times over."""
    from digits import load_digits_tensors, train_digits_cnn

    from captum_ssa import StepwiseSensitivity

    # the package exports the function under the module's name: the module itself
    module = importlib.import_module("captum_ssa.graph.neuron_examples")

    torch.set_num_threads(1)
    digits = load_digits_tensors()
    model = train_digits_cnn(digits.x_train, digits.y_train)
    ssa = StepwiseSensitivity(model, [model.conv1, model.conv2, model.fc1, model.fc2])
    graph = ssa.class_graphs(digits.x_train, digits.y_train, classes=[3])[3]
    x = torch.cat([digits.x_train, digits.x_test])
    data = Repeated(x, times)

    started = time.perf_counter()
    with torch.no_grad():
        for batch in data:
            model(batch)
    plain = time.perf_counter() - started

    pattern_seconds = []
    find_patterns = module.find_patterns

    def timed(*args: Any, **kwargs: Any) -> Any:
        begun = time.perf_counter()
        try:
            return find_patterns(*args, **kwargs)
        finally:
            pattern_seconds.append(time.perf_counter() - begun)

    module.find_patterns = timed  # type: ignore[assignment]
    with PeakMemory() as memory:
        started = time.perf_counter()
        shown = module.neuron_examples(graph, data)
        seconds = time.perf_counter() - started
    hidden = graph.layer_names[:-1]
    return {
        "examples": len(x) * times,
        "neurons": sum(len(graph.neurons(name)) for name in hidden),
        "seconds": seconds,
        "plain": plain,
        "patterns": pattern_seconds[0],
        "peak_mib": memory.above_start_mib,
        "json_kib": len(json.dumps(shown)) / 1024,
    }


def views() -> None:
    """Per-view calls against one pass for all views, medians of 5 interleaved runs."""
    from digits import load_digits_tensors, train_digits_cnn

    from captum_ssa import StepwiseSensitivity
    from captum_ssa.graph import shared_subgraph

    module = importlib.import_module("captum_ssa.graph.neuron_examples")
    torch.set_num_threads(1)
    digits = load_digits_tensors()
    model = train_digits_cnn(digits.x_train, digits.y_train)
    ssa = StepwiseSensitivity(model, [model.conv1, model.conv2, model.fc1, model.fc2])
    graphs = list(ssa.class_graphs(digits.x_train, digits.y_train, classes=[3, 8]).values())
    graphs.append(shared_subgraph(graphs))
    per_view, one_pass = [], []
    for _ in range(5):
        started = time.perf_counter()
        separate = [module.neuron_examples(graph, digits.x_test) for graph in graphs]
        per_view.append(time.perf_counter() - started)
        started = time.perf_counter()
        together = module.neuron_examples_of_graphs(graphs, digits.x_test)
        one_pass.append(time.perf_counter() - started)
        assert separate == together
    each, once = statistics.median(per_view), statistics.median(one_pass)
    print(f"load average {os.getloadavg()[0]:.2f}, 3 views, {len(digits.x_test)} test digits")
    print(f"one call per view {each:.3f} s, one pass for all {once:.3f} s: {each / once:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh runs per case")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--views", action="store_true", help="per-view calls vs one pass")
    arguments = parser.parse_args()
    if arguments.views:
        views()
        return
    if arguments.case is not None:
        print(json.dumps(case(arguments.case)))
        return
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(
        "examples | kept neurons | s (median) | / plain pass | patterns share | peak MiB | JSON KiB"
    )
    for times in (1, 10):
        runs = []
        for _ in range(arguments.repeats):
            output = subprocess.run(
                [sys.executable, __file__, "--case", str(times)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            ).stdout
            runs.append(json.loads(output.splitlines()[-1]))
        first = runs[0]
        seconds = statistics.median(run["seconds"] for run in runs)
        ratio = statistics.median(run["seconds"] / run["plain"] for run in runs)
        share = statistics.median(run["patterns"] / run["seconds"] for run in runs)
        peak = max(run["peak_mib"] for run in runs)
        print(
            f"{first['examples']:,} | {first['neurons']} | {seconds:.3f} | {ratio:.1f} | "
            f"{share:.0%} | {peak:.1f} | {first['json_kib']:.0f}"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
