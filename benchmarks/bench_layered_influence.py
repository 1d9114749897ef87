"""Speed and memory of LayeredInfluence's monotone influence measure.

The measure for B queries against M reference points over U units needs at
least two (B x U x M) matrix products: one for the pairwise distances, one for
the weighted sum of the reference points. This script times, in one run:

- the chunked measure (``captum_ssa._core.layered_influence.influence``);
- those two matrix products alone, the floor any implementation pays;
- the plain loop over pairs, on a subset, extrapolated to B x M pairs;

and, each in a fresh subprocess, the peak memory above the data for growing
reference sets, chunked and in one block. Run from the repository root::

    python benchmarks/bench_layered_influence.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from captum_ssa._core.layered_influence.influence import (
    DEFAULT_POINTS_PER_CHUNK,
    monotone_influence,
)


def problem(queries: int, reference: int, units: int, seed: int = 0):
    """ReLU-like activations and two classes, as a 2-class CNN layer gives."""
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(queries, units, generator=generator).clamp_(min=0),
        torch.randint(0, 2, (queries,), generator=generator),
        torch.randn(reference, units, generator=generator).clamp_(min=0),
        torch.randint(0, 2, (reference,), generator=generator),
    )


def best_times(functions: list[Callable[[], object]], repeats: int) -> list[float]:
    """The best of ``repeats`` runs of each, interleaved so that all of them see
    the same load on a shared machine."""
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for position, function in enumerate(functions):
            started = time.perf_counter()
            function()
            best[position] = min(best[position], time.perf_counter() - started)
    return best


def pair_loop(queries, query_labels, reference, reference_labels):
    """The plain implementation: one pair at a time."""
    influence = torch.zeros_like(queries)
    for i in range(len(queries)):
        for j in range(len(reference)):
            if query_labels[i] != reference_labels[j]:
                difference = queries[i] - reference[j]
                squared = difference.dot(difference)
                if squared > 0:
                    influence[i] += difference / squared
    return influence


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process. Unlike getrusage's
    ru_maxrss, VmHWM starts afresh in an exec'd child instead of inheriting the
    parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure_memory(queries: int, reference: int, units: int, points_per_chunk: int) -> None:
    """In a fresh process: peak RSS above the data while computing phi."""
    data = problem(queries, reference, units)
    baseline = memory_mb("VmRSS")
    monotone_influence(*data, points_per_chunk=points_per_chunk)
    peak = memory_mb("VmHWM")
    print(json.dumps({"data_mb": baseline, "extra_mb": peak - baseline}))


def memory_in_subprocess(queries: int, reference: int, units: int, points_per_chunk: int) -> dict:
    command = [sys.executable, __file__, "--memory-child"]
    command += [str(v) for v in (queries, reference, units, points_per_chunk)]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"the memory measurement failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--reference", type=int, default=5000)
    parser.add_argument("--units", type=int, default=6272)  # 32 x 14 x 14
    parser.add_argument("--points-per-chunk", type=int, default=DEFAULT_POINTS_PER_CHUNK)
    parser.add_argument("--loop-queries", type=int, default=4)
    parser.add_argument("--loop-reference", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory-child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        measure_memory(*args.memory_child)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    queries, query_labels, reference, reference_labels = problem(
        args.queries, args.reference, args.units
    )
    shape = f"{args.queries} queries x {args.units} units x {args.reference} reference points"
    print(f"{shape}, float32, torch {torch.__version__}, {torch.get_num_threads()} threads")

    def measure() -> torch.Tensor:
        return monotone_influence(
            queries,
            query_labels,
            reference,
            reference_labels,
            points_per_chunk=args.points_per_chunk,
        )

    weights = torch.rand(args.queries, args.reference)

    def two_products() -> None:
        torch.mm(queries, reference.T)  # the squared distances' cross term
        torch.mm(weights, reference)  # the weighted sum of reference points

    measure()  # warm-up
    measure_time, products_time = best_times([measure, two_products], args.repeats)

    loop_slice = (slice(0, args.loop_queries), slice(0, args.loop_reference))
    subset = (
        queries[loop_slice[0]],
        query_labels[loop_slice[0]],
        reference[loop_slice[1]],
        reference_labels[loop_slice[1]],
    )
    started = time.perf_counter()
    looped = pair_loop(*subset)
    loop_pairs = args.loop_queries * args.loop_reference
    loop_time = (time.perf_counter() - started) / loop_pairs * args.queries * args.reference
    torch.testing.assert_close(monotone_influence(*subset), looped, rtol=1e-3, atol=1e-5)

    print(f"chunked measure ({args.points_per_chunk} points per chunk): {measure_time:8.3f} s")
    print(f"the two matrix products alone:   {products_time:8.3f} s")
    print(f"plain pair loop (extrapolated from {loop_pairs} pairs): {loop_time:8.1f} s")
    print(f"speed-up over the pair loop:      {loop_time / measure_time:8.1f}x  (need >= 25)")
    print(f"time / two matrix products:       {measure_time / products_time:8.2f}   (need <= 2)")

    print("\npeak memory above the data (VmHWM - VmRSS, a fresh process each), MB:")
    chunk_choices = (256, args.points_per_chunk)
    columns = "".join(f"{'chunk ' + str(c):>12}" for c in chunk_choices)
    print(f"{'reference points':>18} {'data':>8}{columns} {'one block':>10}")
    for size in (args.reference // 2, args.reference, args.reference * 2, args.reference * 4):
        runs = [memory_in_subprocess(args.queries, size, args.units, c) for c in chunk_choices]
        whole = memory_in_subprocess(args.queries, size, args.units, max(size, args.queries))
        extras = "".join(f"{run['extra_mb']:>12.1f}" for run in runs)
        print(f"{size:>18} {runs[0]['data_mb']:>8.0f}{extras} {whole['extra_mb']:>10.1f}")
    result_mb = args.queries * args.units * 4 / 2**20
    print(
        f"(the {args.queries} x {args.units} result alone is {result_mb:.1f} MB; the rest is "
        "chunk-sized blocks and allocator/BLAS overhead)"
    )


if __name__ == "__main__":
    main()
