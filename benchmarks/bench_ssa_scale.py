"""StepwiseSensitivity at dataset scale: time, peak memory and the memory budget.

Each measurement runs in a fresh subprocess (peak RSS is a per-process figure);
the data are generated batch by batch from a seed, so that the dataset itself
takes no memory and only SSA's own memory shows. In one run it prints:

(a) a small CNN (``tests.models.CNN``, 10x10 inputs, global graph of class 0)
    streamed over 2,000 and 20,000 inputs in batches of 500: time and peak RSS,
    and their ratios (flat memory: RSS ratio ~1; linear time: time ratio ~10);
(b) the wide conv pair conv(64->256) -> ReLU -> conv(256->256) at 56x56, batch
    16 (each activation 49 MB), every upper neuron, default settings: the peak
    RSS above the model, data and one plain forward pass. ``--before PATH``
    also runs it on another checkout of the package (e.g. the commit before the
    memory budget, extracted with ``git archive``);
(c) a CIFAR ResNet-18 (``tests.models.ResNet``, 11.2M parameters, random
    weights, 32x32 inputs; layers: the four stages' outputs and the logits),
    global graph of class 0 with ``branching=8``, streamed over ``--resnet``
    inputs in batches of 100: time, peak RSS and the time per input against one
    one-batch call on 100 inputs (target ratio <= 1.2).

Run from the repository root::

    python benchmarks/bench_ssa_scale.py [--quick] [--resnet 10000] [--before PATH]

``--convnext`` prints instead (d): peak RSS and time of SSA on a ConvNeXt-like model
(convnext_tiny's widths 96-192-384-768 and depths 3-3-9-3, random weights, 32x32
inputs, eval mode) listing ``features[5], features[7], classifier[2]`` (the last two
stages' outputs and the classifier's Linear), ``--convnext-count`` inputs in one batch,
target 1, percentile 50, under the default 256 MiB memory budget, in float32 and
float64, with ``passes="per_pair"`` (the default for gradients) and ``"single"``; for
this checkout and, with ``--before PATH``, another one; ``--convnext-lowest 1`` lists
``features[1]`` (the first stage's output) instead, so that the whole network lies between
the listed layers::

    python benchmarks/bench_ssa_scale.py --convnext [--before PATH] [--dtypes float64]

``--quick`` shrinks (a) to 200 vs 2,000 inputs; the full ResNet run over
10,000 inputs takes hours on a laptop CPU (four passes of ResNet-18 and 25
backward passes per input), minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

sys.path.append(os.getcwd())  # after PYTHONPATH, which --before sets


class SeededBatches:
    """``count`` random inputs shaped ``shape`` in batches, the same on every pass,
    generated on the fly (a re-iterable stream, like a DataLoader)."""

    def __init__(self, count: int, batch: int, shape: tuple[int, ...], seed: int = 0) -> None:
        self.count, self.batch, self.shape, self.seed = count, batch, shape, seed

    def __len__(self) -> int:
        return -(-self.count // self.batch)

    def __iter__(self) -> Iterator[Tensor]:
        for index, start in enumerate(range(0, self.count, self.batch)):
            generator = torch.Generator().manual_seed(self.seed + index)
            size = min(self.batch, self.count - start)
            yield torch.randn(size, *self.shape, generator=generator)


class WidePair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(64, 256, 3, padding=1)
        self.conv2 = nn.Conv2d(256, 256, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class ConvNeXtBlock(nn.Module):
    """torchvision's CNBlock without stochastic depth: depthwise 7x7, LayerNorm,
    Linear 4x, GELU, Linear, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.depthwise(x).permute(0, 2, 3, 1))
        y = self.fc2(nn.functional.gelu(self.fc1(y))) * self.scale
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """convnext_tiny's layout: ``features`` = stem, then per stage (a downsampling
    GroupNorm + 2x2 conv from the second on) its blocks; global average pooling;
    ``classifier`` = Flatten, LayerNorm, Linear."""

    def __init__(
        self, dims: tuple[int, ...] = (96, 192, 384, 768), depths: tuple[int, ...] = (3, 3, 9, 3)
    ) -> None:
        super().__init__()
        features: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), nn.GroupNorm(1, dims[0]))
        ]
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            if stage:
                features.append(
                    nn.Sequential(
                        nn.GroupNorm(1, dims[stage - 1]), nn.Conv2d(dims[stage - 1], dim, 2, 2)
                    )
                )
            features.append(nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)]))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], 10)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def measure_convnext(count: int, dtype_name: str, passes: str, lowest: int = 5) -> dict[str, Any]:
    """SSA's peak RSS above the model, the data and one forward pass, in this process."""
    import warnings

    from captum_ssa import StepwiseSensitivity

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    model = ConvNeXt().to(dtype).eval()
    x = torch.randn(count, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        model(x)
    before = peak_mb()
    layers = [model.features[lowest], model.features[7], model.classifier[2]]
    start = time.perf_counter()
    StepwiseSensitivity(model, layers).attribute(x, target=1, percentile=50, passes=passes)
    return {"seconds": time.perf_counter() - start, "extra_peak_mb": peak_mb() - before}


def convnext_table(arguments: argparse.Namespace) -> None:
    budget = 256
    print(
        f"(d) SSA on a ConvNeXt-like model (convnext_tiny widths, depths 3-3-9-3, 32x32), "
        f"features[{arguments.convnext_lowest}], features[7], classifier[2], "
        f"{arguments.convnext_count} inputs, "
        f"{budget} MiB budget, {os.environ.get('OMP_NUM_THREADS', 'default')} thread(s): "
        "peak RSS above model, data and one forward pass (MB), seconds; a fresh process each"
    )
    for label, path in [("this checkout", os.getcwd()), ("before", arguments.before)]:
        if label == "before" and not path:
            continue
        for dtype in arguments.dtypes:
            for passes in ("per_pair", "single"):
                case = f"convnext:{dtype}:{passes}:{arguments.convnext_lowest}"
                row = in_subprocess(case, arguments.convnext_count, path)
                print(
                    f"{label:<14} {dtype:<8} {passes:<9} +{row['extra_peak_mb']:7.0f} MB "
                    f"({row['extra_peak_mb'] / budget:4.1f}x budget) {row['seconds']:7.1f} s",
                    flush=True,
                )


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(case: str, count: int, relevance: str = "gradient") -> dict[str, Any]:
    """One measurement, in this process."""
    from captum_ssa import StepwiseSensitivity

    if case.startswith("convnext:"):
        _, dtype_name, passes, lowest = case.split(":")
        return measure_convnext(count, dtype_name, passes, int(lowest))
    torch.manual_seed(0)
    if case == "wide":
        model = WidePair().eval()
        x = torch.randn(16, 64, 56, 56)
        with torch.no_grad():
            model(x)
        before = rss_mb()
        start = time.perf_counter()
        StepwiseSensitivity(model, [model.conv1, model.conv2]).attribute(x)
        return {"seconds": time.perf_counter() - start, "extra_peak_mb": peak_mb() - before}
    from tests.models import CNN, ResNet, randomise_batch_norm

    if case == "cnn":
        model = CNN().eval()
        layers = [model.conv1, model.conv2, model.fc1, model.fc2]
        data: Any = SeededBatches(count, 500, (1, 10, 10))
        options: dict[str, Any] = {"target": 0}
    else:
        model = randomise_batch_norm(ResNet()).eval()
        layers = model.ssa_layers()
        data = SeededBatches(count, 100, (3, 32, 32))
        if case == "resnet_one_batch":
            data = next(iter(data))
        options = {"target": 0, "branching": 8, "relevance": relevance}
    ssa = StepwiseSensitivity(model, layers)
    # a first call pays for one-off costs (lazy imports, allocator warm-up), not SSA's
    ssa.attribute(
        next(iter(SeededBatches(2, 2, data.shape[1:] if isinstance(data, Tensor) else data.shape))),
        **options,
    )
    before = rss_mb()
    start = time.perf_counter()
    graph = ssa.attribute(data, **options)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "per_input_ms": 1000 * seconds / graph.metadata["num_examples"],
        "peak_rss_mb": peak_mb(),
        "extra_peak_mb": peak_mb() - before,
    }


def in_subprocess(
    case: str, count: int, pythonpath: str = "", relevance: str = "gradient"
) -> dict[str, Any]:
    environment = dict(os.environ)
    if pythonpath:
        environment["PYTHONPATH"] = pythonpath
    command = [sys.executable, __file__, "--measure", case, "--count", str(count)]
    command += ["--relevance", relevance]
    output = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--resnet", type=int, default=10_000, help="ResNet inputs (0: skip)")
    parser.add_argument("--before", default="", help="another checkout to compare (b) with")
    parser.add_argument(
        "--relevance",
        default="gradient",
        help="the ResNet graph's relevance; activations_abs needs no backward pass, so one "
        "pass over 10,000 inputs takes minutes on a CPU",
    )
    parser.add_argument("--resnet-only", action="store_true", help="skip (a) and (b)")
    parser.add_argument("--convnext", action="store_true", help="only (d), see above")
    parser.add_argument("--convnext-count", type=int, default=100)
    parser.add_argument(
        "--convnext-lowest",
        type=int,
        default=5,
        help="the lowest listed layer, features[N]: 5 (the issue's), 1 (the whole net between)",
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--measure", default="")
    parser.add_argument("--count", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.measure:
        print(json.dumps(measure(arguments.measure, arguments.count, arguments.relevance)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if arguments.convnext:
        convnext_table(arguments)
        return
    small, large = (200, 2_000) if arguments.quick else (2_000, 20_000)
    if not arguments.resnet_only:
        first, second = in_subprocess("cnn", small), in_subprocess("cnn", large)
        print(f"(a) small CNN {small}: {first}")
        print(f"(a) small CNN {large}: {second}")
        print(
            f"(a) ratios {large}/{small}: time {second['seconds'] / first['seconds']:.2f}, "
            f"peak RSS {second['peak_rss_mb'] / first['peak_rss_mb']:.3f} "
            f"({second['peak_rss_mb'] - first['peak_rss_mb']:+.1f} MB)"
        )
        print(f"(b) wide conv pair, default settings: {in_subprocess('wide', 0)}")
        if arguments.before:
            print(f"(b) the same, {arguments.before}: {in_subprocess('wide', 0, arguments.before)}")
    if arguments.resnet:
        one = in_subprocess("resnet_one_batch", 100, relevance=arguments.relevance)
        streamed = in_subprocess("resnet", arguments.resnet, relevance=arguments.relevance)
        print(f"(c) ResNet-18, relevance {arguments.relevance!r}, one batch of 100: {one}")
        print(f"(c) ResNet-18, {arguments.resnet} inputs streamed: {streamed}")
        ratio = streamed["per_input_ms"] / one["per_input_ms"]
        print(f"(c) per-input time streamed / one batch: {ratio:.2f}")


if __name__ == "__main__":
    main()
