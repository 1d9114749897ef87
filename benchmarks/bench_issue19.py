# ruff: noqa: B023, E501  (lambdas called within their iteration; wide table rows)
"""Issue 19, items 4 and 5, in one run.

(a) Insens against a plain per-neuron autograd loop and the best full Jacobian
    (``vmap(jacrev)``/``vmap(jacfwd)``) on a ResNet-18-style, a VGG-11-bn-style and
    a small ViT-style model (benchmark-local, narrowed to run on a laptop CPU),
    float64, 32x32 inputs: median seconds per call, interleaved. "Insens 1st" is a
    fresh explainer (its strategy measured in the call), "Insens" a warm one.
(b) SSA's peak RSS on a ConvNeXt-like model listing the last two stages and the
    classifier under the 256 MiB budget, float32 and float64, in a fresh process
    each, for this checkout and (``--before PATH``) another one.

    python benchmarks/bench_issue19.py [--before /tmp/before] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch import Tensor, nn

sys.path.append(os.getcwd())


def vgg11_bn(width: int = 8) -> nn.Sequential:
    config = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(channels, item * width, 3, padding=1),
                nn.BatchNorm2d(item * width),
                nn.ReLU(),
            ]
            channels = item * width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels, 10))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.fc2(torch.relu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, patch: int = 8) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, patch)
        self.position = nn.Parameter(torch.randn(1, (32 // patch) ** 2, dim) * 0.1)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.blocks(x).mean(1))


def models() -> dict[str, tuple[nn.Module, nn.Module]]:
    from tests.models import ResNet, randomise_batch_norm

    torch.manual_seed(0)
    resnet = randomise_batch_norm(ResNet(width=8)).double().eval()
    vgg = randomise_batch_norm(vgg11_bn()).double().eval()
    vit = ViT().double().eval()
    return {
        "resnet18-style (width 8), layer4[1].conv2": (resnet, resnet.layer4[1].conv2),
        "vgg11_bn-style (width 8), conv at 4x4": (vgg, vgg[22]),
        "vit-style (dim 32, 2 blocks), blocks[1].fc1": (vit, vit.blocks[1].fc1),
    }


def up_to(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]


def coefficients(values: Tensor, squared: Tensor, frequency: Tensor) -> Tensor:
    selected = (values <= 0) & (squared > 0)
    safe = torch.where(squared > 0, squared, torch.ones_like(squared))
    return torch.where(selected, frequency * values / safe, torch.zeros_like(values))


def loop(model: nn.Module, layer: nn.Module, x: Tensor, frequency: Tensor) -> Tensor:
    x = x.detach().requires_grad_()
    flat = up_to(model, layer, x).flatten(1)
    values, weights = flat.detach(), frequency.flatten()
    omega = torch.zeros_like(x).flatten(1)
    for neuron in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, neuron].sum(), x, retain_graph=True)
        row = row.flatten(1)
        omega += (
            coefficients(values[:, neuron], row.square().sum(1), weights[neuron])[:, None] * row
        )
    return omega.view_as(x)


def full(transform):
    def omega(model: nn.Module, layer: nn.Module, x: Tensor, frequency: Tensor) -> Tensor:
        def single(example: Tensor) -> Tensor:
            return up_to(model, layer, example[None])[0]

        jacobian = torch.func.vmap(transform(single))(x.detach()).reshape(
            len(x), frequency.numel(), -1
        )
        with torch.no_grad():
            values = up_to(model, layer, x).flatten(1)
        factors = coefficients(values, jacobian.square().sum(2), frequency.flatten())
        return torch.einsum("nu,nud->nd", factors, jacobian).view_as(x)

    return omega


def insens_table(repeats: int) -> None:
    from captum_ssa import InactiveStateSensitivity

    print(
        f"(a) Insens vs loop vs full Jacobian, float64, batch 2, {torch.get_num_threads()} thread(s), "
        f"median s of {repeats} interleaved runs"
    )
    print(
        f"{'model':<44} {'units':>6} {'chosen':>8} {'Insens 1st':>10} {'Insens':>8} {'loop':>8} "
        f"{'jacrev':>8} {'jacfwd':>8} {'I/loop':>7} {'I/best':>7} {'err':>8}"
    )
    for name, (model, layer) in models().items():
        x, reference = (
            torch.randn(2, 3, 32, 32, dtype=torch.float64),
            torch.randn(16, 3, 32, 32, dtype=torch.float64),
        )
        warm = InactiveStateSensitivity(model, layer).fit(reference)
        frequency = warm.activation_frequency
        methods = {
            "first": lambda: InactiveStateSensitivity(model, layer).fit(reference).attribute(x),
            "insens": lambda: warm.attribute(x),
            "loop": lambda: loop(model, layer, x, frequency),
            "jacrev": lambda: full(torch.func.jacrev)(model, layer, x, frequency),
            "jacfwd": lambda: full(torch.func.jacfwd)(model, layer, x, frequency),
        }
        results = {k: m().detach() for k, m in methods.items()}
        scale = results["loop"].abs().max()
        error = max(float((r - results["loop"]).abs().max() / scale) for r in results.values())
        times: dict[str, list[float]] = {k: [] for k in methods}
        for _ in range(repeats):
            for key, method in methods.items():
                started = time.perf_counter()
                method()
                times[key].append(time.perf_counter() - started)
        t = {k: statistics.median(v) for k, v in times.items()}
        (plan,) = warm._jacobian_plans.values()
        print(
            f"{name:<44} {frequency.numel():>6} {plan.mode:>8} {t['first']:>10.3f} {t['insens']:>8.3f} "
            f"{t['loop']:>8.3f} {t['jacrev']:>8.3f} {t['jacfwd']:>8.3f} {t['insens'] / t['loop']:>7.2f} "
            f"{t['insens'] / min(t['jacrev'], t['jacfwd']):>7.2f} {error:>8.1e}",
            flush=True,
        )


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.depthwise(x).permute(0, 2, 3, 1))
        return x + self.fc2(nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)


def convnext_like() -> nn.Module:
    """convnext_tiny's widths (96-768) and stem, depths 2-2-4-2, 32x32 inputs."""
    dims, depths = [96, 192, 384, 768], [2, 2, 4, 2]
    features: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4)]
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            features.append(
                nn.Sequential(
                    nn.GroupNorm(1, dims[stage - 1]), nn.Conv2d(dims[stage - 1], dim, 2, 2)
                )
            )
        features.append(nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(depth)]))
    model = nn.Module()
    model.features = nn.Sequential(*features)
    model.classifier = nn.Sequential(nn.Flatten(), nn.LayerNorm(768), nn.Linear(768, 10))
    model.forward = lambda x: model.classifier(model.features(x).mean((2, 3), keepdim=True))  # type: ignore[method-assign]
    return model


def ssa_child(dtype_name: str, count: int) -> None:
    from captum_ssa import StepwiseSensitivity

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    model = convnext_like().to(dtype).eval()
    x = torch.randn(count, 3, 32, 32, dtype=dtype)
    with torch.no_grad():
        model(x[:2])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    layers = [model.features[5], model.features[7], model.classifier[2]]
    StepwiseSensitivity(model, layers).attribute(x, target=1, percentile=50)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"extra_mb": peak - base, "seconds": time.perf_counter() - started}))


def ssa_table(before: str, count: int) -> None:
    print(
        f"\n(b) SSA on a ConvNeXt-like model, features[5], features[7], classifier[2], {count} inputs, "
        "256 MiB budget: peak RSS above model and data (MB), seconds"
    )
    for label, path in [("this checkout", os.getcwd()), ("before", before)]:
        if not path:
            continue
        for dtype in ("float32", "float64"):
            env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
            done = subprocess.run(
                [sys.executable, __file__, "--ssa-child", dtype, str(count)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{label:<14} {dtype:<8} +{row['extra_mb']:8.0f} MB {row['seconds']:8.1f} s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--ssa-child", nargs=2)
    parser.add_argument("--skip-insens", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.ssa_child:
        ssa_child(args.ssa_child[0], int(args.ssa_child[1]))
        return
    warnings.simplefilter("ignore")
    if not args.skip_insens:
        insens_table(args.repeats)
    ssa_table(args.before, args.count)


if __name__ == "__main__":
    main()
