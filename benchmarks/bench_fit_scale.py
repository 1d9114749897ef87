"""Time and peak memory of the dataset-scale calls, at 2,000 and at 20,000 inputs.

Each measurement runs in a fresh subprocess, which builds a small CNN on 8x8
inputs, streams the inputs through a ``DataLoader`` (256 per batch) and reports
the wall time of one call and its peak resident memory above what the process
held just before the call (the data, the model and the loaded libraries):

- ``InactiveStateSensitivity.fit`` on three layers;
- ``LayeredInfluence.fit`` choosing among three layers (``criterion=
  "dispersion"`` on a 512-point subsample: the ``"linear"`` criterion's time is
  scikit-learn's probes), and with ``layer=`` given (the widest layer, 1,024
  units per input); for both, the peak divided by the bytes of reference
  activations the explainer keeps;
- ``evaluate_graph`` and ``ablation_importance`` (16 conv channels) of one graph.

Time and memory should grow at most linearly from 2,000 to 20,000 inputs; the
ratios are printed. ``--old PATH`` also runs the cases on another checkout of the
package (e.g. ``git archive e562af0 | tar -x -C /tmp/old``), whose graph
evaluations take tensors rather than a stream; not the choosing fit, which there
scores dispersion on every pair of the 20,000 points. Run from the repository
root::

    python benchmarks/bench_fit_scale.py [--old /tmp/old]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CASES = ("insens_fit", "layered_fit_choose", "layered_fit_given", "evaluate_graph", "ablation")
SIZES = (2_000, 20_000)
BATCH = 256


def build(size: int) -> tuple[Any, Any, Any, Any]:
    """A seeded CNN whose logits are centred (so it predicts several classes),
    ``size`` random 8x8 inputs, their labels and a DataLoader over them."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),  # 16 x 8 x 8 = 1,024 units
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),  # 32 x 4 x 4 = 512 units
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(512, 128),
        nn.ReLU(),
        nn.Linear(128, 3),  # few classes: the linear probes stay quick
    ).eval()
    x = torch.randn(size, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model[-1].bias -= model(x[:512]).mean(0)
        # a batch at a time: no dataset-sized temporaries before the measurement
        labels = torch.cat([model(part).argmax(1) for part in x.split(BATCH)])
    return model, x, labels, DataLoader(TensorDataset(x, labels), batch_size=BATCH)


def graph_of(model: Any) -> Any:
    """A graph keeping half of every hidden layer's neurons, targeting class 1."""
    import torch

    # the package's top level, where older checkouts export it too
    from captum_ssa import DependencyGraph

    layers = [model[0], model[2], model[5], model[7]]
    sizes = [16, 32, 128, 3]
    neurons = [torch.arange(0, size, 2) for size in sizes[:-1]] + [torch.tensor([1])]
    return DependencyGraph(
        ["conv1", "conv2", "fc1", "fc2"],
        layers,
        neurons,
        [torch.rand(size) for size in sizes],
        [torch.rand(len(neurons[i + 1]), sizes[i]) for i in range(3)],
        [torch.cartesian_prod(neurons[i], neurons[i + 1]) for i in range(3)],
        target=1,
    )


def kept_bytes(explainer: Any) -> int:
    """Bytes of reference activations a fitted LayeredInfluence keeps (this
    checkout keeps one layer's blocks in its fit; older ones the same blocks
    beside it, or every candidate's)."""
    fit = getattr(explainer, "_fit", None)
    if fit is not None:
        return int(fit.reference.nbytes)
    reference = getattr(explainer, "_reference", None)
    if reference is not None:
        return int(reference.nbytes)
    return sum(r.activations.numel() * r.activations.element_size() for r in explainer._references)


def release_freed_memory() -> None:
    """Give freed heap memory back to the system, so that the call's peak is not
    hidden by memory the process freed earlier and would reuse (glibc only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_case(case: str, size: int, streams_graphs: bool) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import psutil
    import torch

    # the package's top level, where old checkouts export them too
    from captum_ssa import (
        InactiveStateSensitivity,
        LayeredInfluence,
        ablation_importance,
        evaluate_graph,
    )

    torch.set_num_threads(1)  # comparable timings on a shared machine
    model, x, labels, loader = build(size)
    graph = graph_of(model)
    candidates = [model[0], model[2], model[5]]

    def call(x: Any, labels: Any, loader: Any) -> Any:
        graph_data = (loader,) if streams_graphs else (x, labels)
        if case == "insens_fit":
            return InactiveStateSensitivity(model, candidates).fit(loader)
        if case == "layered_fit_choose":
            # the linear criterion's time would be scikit-learn's probes (tens of
            # seconds on 2,000 points); dispersion on a capped subsample is not
            return LayeredInfluence(model, candidates).fit(
                loader, criterion="dispersion", dispersion_points=512
            )
        if case == "layered_fit_given":
            return LayeredInfluence(model, candidates).fit(loader, layer=model[0])
        if case == "evaluate_graph":
            return evaluate_graph(model, graph, *graph_data)
        return ablation_importance(model, model[0], *graph_data)

    # a first call on a few batches, so that one-time costs (kernel set-up, the
    # allocator's first pages) are not counted
    warm = BATCH * 2
    call(
        x[:warm], labels[:warm], [(x[:BATCH], labels[:BATCH]), (x[BATCH:warm], labels[BATCH:warm])]
    )
    process = psutil.Process()
    gc.collect()
    release_freed_memory()
    before = process.memory_info().rss
    highest_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampled = [before]
    running = True

    def sample() -> None:  # ru_maxrss misses a peak below an earlier one
        while running:
            sampled.append(process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = call(x, labels, loader)
    seconds = time.perf_counter() - started
    running = False
    sampler.join()
    highest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(sampled) if highest <= highest_before else max(highest, max(sampled))
    measured = {"seconds": seconds, "peak_bytes": peak - before}
    if case.startswith("layered"):
        measured["kept_bytes"] = kept_bytes(result)
        measured["layer"] = result.chosen_layer_name
    return measured


def measure(case: str, size: int, package: str | None) -> dict[str, Any]:
    environment = dict(os.environ)
    if package is not None:
        environment["PYTHONPATH"] = package
    command = [sys.executable, __file__, "--child", case, str(size)]
    if package is not None:
        command.append("--tensors")
    output = subprocess.run(
        command, env=environment, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="a checkout of an older captum_ssa to compare with")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="what to run")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--tensors", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        case, size = arguments.child
        print(json.dumps(run_case(case, int(size), streams_graphs=not arguments.tensors)))
        return
    versions = {"new": None} if arguments.old is None else {"new": None, "old": arguments.old}
    header = f"{'case':<20}{'version':<8}" + "".join(
        f"{f'{size:,} s':>12}{f'{size:,} MiB':>12}" for size in SIZES
    )
    print(header + f"{'time x':>8}{'memory x':>10}{'peak/kept':>18}")
    for case in arguments.cases:
        for version, package in versions.items():
            if case == "layered_fit_choose" and package is not None:
                continue  # an older checkout has no subsample: M^2 pairs per layer
            if package is not None:
                package = str(Path(package).resolve())
            results = [measure(case, size, package) for size in SIZES]
            cells = "".join(
                f"{r['seconds']:>12.2f}{r['peak_bytes'] / 2**20:>12.1f}" for r in results
            )
            time_ratio = results[1]["seconds"] / results[0]["seconds"]
            memory_ratio = results[1]["peak_bytes"] / max(1, results[0]["peak_bytes"])
            kept = ""
            if "kept_bytes" in results[0]:
                kept = " / ".join(f"{r['peak_bytes'] / r['kept_bytes']:.2f}" for r in results)
            print(f"{case:<20}{version:<8}{cells}{time_ratio:>8.1f}{memory_ratio:>10.1f}{kept:>18}")
            for size, r in zip(SIZES, results):
                if "kept_bytes" in r:
                    print(
                        f"{'':<28}{size:,} inputs: keeps {r['kept_bytes'] / 2**20:.1f} MiB "
                        f"of activations (layer {r['layer']})"
                    )


if __name__ == "__main__":
    main()
