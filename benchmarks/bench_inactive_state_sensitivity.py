"""Speed and memory of InactiveStateSensitivity (Insens) on the paper's 2CONV network.

2CONV: 28x28x1 -> conv 5x5 32 -> ReLU -> max-pool 2 -> conv 5x5 64 -> ReLU -> max-pool 2
-> fc 128 -> ReLU -> fc 10, random weights, eval mode. For each layer this script computes
Omega (default ``weighting="frequency"``) four ways, in one run, interleaved:

- Insens: ``InactiveStateSensitivity(model, layer).fit(reference).attribute(x)`` (the fit
  is done once beforehand and its frequencies are given to the other three, so only the
  Jacobian work is compared; the fit's time is printed apart);
- the per-neuron loop: one ``torch.autograd.grad`` per neuron over a single forward graph;
- ``torch.func.jacrev`` and ``torch.func.jacfwd``: the full Jacobian of every example
  (vmapped over the batch), then the same ||w_i||^2 and Omega from it;

prints per-example times and their ratios, checks that all four give the same Omega, and,
each in a fresh subprocess, the peak memory of ``attribute`` for several ``chunk_size``
settings. Run from the repository root::

    python benchmarks/bench_inactive_state_sensitivity.py

``--architectures`` prints instead the same comparison on a ResNet-18-style, a
VGG-11-bn-style and a ViT-style model (benchmark-local, narrowed to run on a laptop
CPU; random weights, float64, eval mode), two layers each: Insens on its first call
(a fitted explainer that has not yet measured its strategies: the measurement is
timed), Insens warm (its strategy kept), Insens with each strategy forced, the
per-neuron loop and the best full Jacobian; also which strategy ``"auto"`` chose and
its estimates of each::

    python benchmarks/bench_inactive_state_sensitivity.py --architectures --threads 1

``--chunk-sweep`` times Insens with each mode forced over a range of chunk sizes (what
the default chunk bytes were set by)::

    python benchmarks/bench_inactive_state_sensitivity.py --chunk-sweep --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from captum_ssa._core.inactive_state_sensitivity import InactiveStateSensitivity
from captum_ssa._utils import jacobian
from captum_ssa._utils.jacobian import choose_mode, default_chunk_size

LAYERS = ("conv1", "conv2", "fc1", "fc2")
INPUT_SHAPE = (1, 28, 28)


class TwoConv(nn.Module):
    """The paper's 2CONV network for 28x28 grey images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.up_to("fc2", x)

    def up_to(self, name: str, x: Tensor) -> Tensor:
        """The output of layer ``name``: the plain truncated forward the baselines use."""
        x = self.conv1(x)
        if name == "conv1":
            return x
        x = self.conv2(self.pool1(self.relu1(x)))
        if name == "conv2":
            return x
        x = self.fc1(self.pool2(self.relu2(x)).flatten(1))
        if name == "fc1":
            return x
        return self.fc2(self.relu3(x))


def build(batch_size: int, reference_size: int, seed: int = 0) -> tuple[TwoConv, Tensor, Tensor]:
    """The model, the inputs and the reference set, image-like values in [0, 1)."""
    torch.manual_seed(seed)
    model = TwoConv().eval()
    return (
        model,
        torch.rand(batch_size, *INPUT_SHAPE),
        torch.rand(reference_size, *INPUT_SHAPE),
    )


def widest_activation(model: TwoConv, name: str, x: Tensor) -> int:
    """Elements per example of the widest module output up to layer ``name``: what
    the default chunk size is sized by (the input and conv1's output here)."""
    sizes = [x[0].numel()]
    handles = [
        module.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()))
        for module in model.modules()
        if module is not model
    ]
    with torch.no_grad():
        model.up_to(name, x)
    for handle in handles:
        handle.remove()
    return max(sizes)


def coefficients(values: Tensor, squared_norms: Tensor, frequency: Tensor) -> Tensor:
    """(m_i / N_ref) v_i / ||w_i||^2 for inactive neurons with w_i != 0, else 0."""
    selected = (values <= 0) & (squared_norms > 0)
    safe = torch.where(squared_norms > 0, squared_norms, torch.ones_like(squared_norms))
    return torch.where(selected, frequency * values / safe, torch.zeros_like(values))


def per_neuron_loop(model: TwoConv, name: str, x: Tensor, frequency: Tensor) -> Tensor:
    """One backward pass per neuron (for the whole batch: examples are independent)."""
    x = x.detach().requires_grad_()
    return omega_by_loop(model.up_to(name, x).flatten(1), x, frequency)


def omega_by_loop(flat: Tensor, x: Tensor, frequency: Tensor) -> Tensor:
    """Omega of the layer output ``flat`` (N, units), computed from ``x``, one backward
    pass per unit."""
    values, weights = flat.detach(), frequency.flatten()
    omega = torch.zeros_like(x).flatten(1)
    for neuron in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, neuron].sum(), x, retain_graph=True)
        row = row.flatten(1)
        omega += (
            coefficients(values[:, neuron], row.square().sum(1), weights[neuron])[:, None] * row
        )
    return omega.view_as(x)


def full_jacobian(
    transform: Callable[..., Callable[..., Tensor]],
) -> Callable[[TwoConv, str, Tensor, Tensor], Tensor]:
    """Omega from every example's whole Jacobian, by ``torch.func.jacrev``/``jacfwd``."""

    def omega(model: TwoConv, name: str, x: Tensor, frequency: Tensor) -> Tensor:
        def single(example: Tensor) -> Tensor:
            return model.up_to(name, example[None])[0]

        x = x.detach()
        jacobian = torch.func.vmap(transform(single))(x).reshape(len(x), frequency.numel(), -1)
        with torch.no_grad():
            values = model.up_to(name, x).flatten(1)
        factors = coefficients(values, jacobian.square().sum(2), frequency.flatten())
        return torch.einsum("nu,nud->nd", factors, jacobian).view_as(x)

    return omega


def median_times(functions: list[Callable[[], object]], repeats: list[int]) -> list[float]:
    """Median of ``repeats[i]`` runs of function i, interleaved so that all of them see
    the same load on a shared machine."""
    times: list[list[float]] = [[] for _ in functions]
    for round_ in range(max(repeats)):
        for position, function in enumerate(functions):
            if round_ < repeats[position]:
                started = time.perf_counter()
                function()
                times[position].append(time.perf_counter() - started)
    return [statistics.median(t) for t in times]


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure_memory(name: str, batch_size: int, reference_size: int, chunk_size: int) -> None:
    """In a fresh process: peak RSS above the model, data and fit while ``attribute``
    runs with ``chunk_size`` (0: the default)."""
    model, x, reference = build(batch_size, reference_size)
    insens = InactiveStateSensitivity(model, getattr(model, name)).fit(reference)
    # warm-up: load the kernels, not the chunks
    insens.attribute(x[:1], jacobian_vectors_per_chunk=1)
    baseline = memory_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # restart VmHWM from the current RSS
    insens.attribute(x, jacobian_vectors_per_chunk=chunk_size or None)
    print(json.dumps({"base_mb": baseline, "extra_mb": memory_mb("VmHWM") - baseline}))


def memory_in_subprocess(name: str, batch_size: int, reference_size: int, chunk: int) -> dict:
    command = [sys.executable, __file__, "--memory-child", name]
    command += [str(v) for v in (batch_size, reference_size, chunk)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def compare_layer(
    args: argparse.Namespace, model: TwoConv, x: Tensor, reference: Tensor, name: str
) -> bool:
    """Time the four ways on one layer, print one table row; True if all agree."""
    batch, features = len(x), x[0].numel()
    started = time.perf_counter()
    insens = InactiveStateSensitivity(model, getattr(model, name)).fit(reference)
    fit_time = time.perf_counter() - started
    frequency = insens.activation_frequency
    assert isinstance(frequency, Tensor)
    units = frequency.numel()
    mode = choose_mode(units, features)
    chunk = default_chunk_size(batch, widest_activation(model, name, x), 4)

    methods: dict[str, Callable[[], Tensor]] = {
        "insens": lambda: insens.attribute(x),
        "loop": lambda: per_neuron_loop(model, name, x, frequency),
        "jacrev": lambda: full_jacobian(torch.func.jacrev)(model, name, x, frequency),
        "jacfwd": lambda: full_jacobian(torch.func.jacfwd)(model, name, x, frequency),
    }
    # jacrev's vmapped one-hot seeds alone are batch x units x units floats
    if batch * units * units * 4 > args.max_seed_gb * 2**30:
        del methods["jacrev"]
    results = {key: method().detach() for key, method in methods.items()}  # also warms up
    plain = results.get("jacrev", results["jacfwd"])
    scale = plain.abs().max()
    error = max(float((r - plain).abs().max() / scale.clamp(min=1e-30)) for r in results.values())

    keys = list(methods)
    repeats = [args.loop_repeats if key == "loop" else args.repeats for key in keys]
    times = dict(zip(keys, median_times([methods[k] for k in keys], repeats)))
    per_example = {key: value / batch for key, value in times.items()}
    best_jacobian = min(per_example.get("jacrev", float("inf")), per_example["jacfwd"])
    with torch.no_grad():
        inactive = model.up_to(name, x).flatten(1) <= 0
    in_sum = int((inactive & (frequency.flatten() > 0)).sum())
    ratios = [
        f"{per_example[key] / per_example['insens']:.2f}" if key in per_example else "skipped"
        for key in ("loop", "jacrev", "jacfwd")
    ]
    print(
        f"{name:>6} {units:>6} {mode:>8} {chunk:>6} {in_sum:>7} {1000 * fit_time:>7.1f} "
        f"{1000 * per_example['insens']:>10.2f} {ratios[0]:>8} {ratios[1]:>9} {ratios[2]:>9} "
        f"{per_example['insens'] / best_jacobian:>10.2f} {error:>12.1e}",
        flush=True,
    )
    return error < 1e-4 and bool(scale > 0)


def speed(args: argparse.Namespace) -> bool:
    model, x, reference = build(args.batch_size, args.reference)
    print(
        f"2CONV, {len(x)} example(s) per call, {args.reference} reference examples, float32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); times are medians "
        f"per example (Insens, jacrev, jacfwd: {args.repeats} runs; loop: {args.loop_repeats})"
    )
    print(
        f"{'layer':>6} {'units':>6} {'mode':>8} {'chunk':>6} {'in sum':>7} {'fit ms':>7} "
        f"{'Insens ms':>10} {'loop/I':>8} {'jacrev/I':>9} {'jacfwd/I':>9} "
        f"{'I/best jac':>10} {'max rel err':>12}"
    )
    agree = [compare_layer(args, model, x, reference, name) for name in args.layers]
    print(
        "targets: I/best jac <= 1.5 on every layer; loop/I >= 1 (several x on the conv layers)."
        "\n'in sum': neurons (over the batch) inactive on x and active on some reference "
        "example, the terms of Omega; 'chunk': Insens's default rows/columns per chunk."
    )
    print("same Omega from all four (max rel err < 1e-4):", "yes" if all(agree) else "NO")
    return all(agree)


def memory(args: argparse.Namespace) -> None:
    print(
        "\npeak memory of attribute() above model, data and fit (VmHWM - VmRSS, a fresh "
        "process each), MB, by chunk_size (rows in reverse mode, columns in forward mode):"
    )
    print(
        f"{'layer':>6} {'mode':>8} {'batch':>6} {'Jacobian':>9} {'chunk 1':>8} {'16':>8} "
        f"{'default':>14} {'one chunk':>15}"
    )
    for name in ("conv1", "fc1"):
        for batch in args.memory_batches:
            model, x, _ = build(batch, 1)
            with torch.no_grad():
                units = model.up_to(name, x[:1]).numel()
            mode = choose_mode(units, x[0].numel())
            whole = units if mode == "reverse" else x[0].numel()
            default = default_chunk_size(batch, widest_activation(model, name, x), 4)
            # 0 asks attribute() for its default, sized by its own probe
            runs = [
                memory_in_subprocess(name, batch, args.reference, chunk)["extra_mb"]
                for chunk in (1, 16, 0, whole)
            ]
            jacobian_mb = batch * units * x[0].numel() * 4 / 2**20
            print(
                f"{name:>6} {mode:>8} {batch:>6} {jacobian_mb:>9.0f} {runs[0]:>8.1f} "
                f"{runs[1]:>8.1f} {f'{runs[2]:.1f} ({default})':>14} "
                f"{f'{runs[3]:.1f} ({whole})':>15}",
                flush=True,
            )
    print("('Jacobian': the whole batch's Jacobian in MB; in brackets: the chunk size)")


# --- --architectures: real architectures, narrowed --------------------------------


def vgg11_bn(width: int = 8) -> nn.Sequential:
    """torchvision's vgg11_bn features at ``width``/64 of its channels; the last
    max-pool is a global average pool, so that 16x16 inputs fit."""
    config: list[object] = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8]
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
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


class ViTBlock(nn.Module):
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
    """Patch embedding, learned positions, pre-norm blocks, mean pooling, head."""

    def __init__(self, size: int, dim: int = 32, depth: int = 2, patch: int = 4) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, patch, patch)
        self.position = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.1)
        self.blocks = nn.Sequential(*[ViTBlock(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.blocks(x).mean(1))


def architectures(size: int, width: int) -> list[tuple[str, nn.Module, nn.Module]]:
    """(row name, model, layer): an early, wide layer and a late, narrow one each."""
    sys.path.append(".")
    from tests.models import ResNet, randomise_batch_norm

    torch.manual_seed(0)
    resnet = randomise_batch_norm(ResNet(width=width)).double().eval()
    vgg = randomise_batch_norm(vgg11_bn(width)).double().eval()
    vit = ViT(size, dim=4 * width).double().eval()
    return [
        ("resnet18 layer1[1].conv2", resnet, resnet.layer1[1].conv2),
        ("resnet18 layer4[1].conv2", resnet, resnet.layer4[1].conv2),
        ("vgg11_bn conv 2 (features[4])", vgg, vgg[4]),
        ("vgg11_bn conv 8 (features[25])", vgg, vgg[25]),
        ("vit blocks[0].fc1", vit, vit.blocks[0].fc1),
        ("vit head", vit, vit.head),
    ]


def layer_output(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """``layer``'s output in a forward pass of ``model`` (the rest is run too)."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]


def loop_on(model: nn.Module, layer: nn.Module, x: Tensor, frequency: Tensor) -> Tensor:
    """The per-neuron loop of :func:`per_neuron_loop` on any model."""
    x = x.detach().requires_grad_()
    return omega_by_loop(layer_output(model, layer, x).flatten(1), x, frequency)


def full_jacobian_on(
    transform: Callable[..., Callable[..., Tensor]],
    model: nn.Module,
    layer: nn.Module,
    x: Tensor,
    frequency: Tensor,
) -> Tensor:
    """Omega from every example's whole Jacobian, as :func:`full_jacobian`."""

    def single(example: Tensor) -> Tensor:
        return layer_output(model, layer, example[None])[0]

    x = x.detach()
    whole = torch.func.vmap(transform(single))(x).reshape(len(x), frequency.numel(), -1)
    with torch.no_grad():
        values = layer_output(model, layer, x).flatten(1)
    factors = coefficients(values, whole.square().sum(2), frequency.flatten())
    return torch.einsum("nu,nud->nd", factors, whole).view_as(x)


class RecordedEstimates:
    """Keeps the estimates ``"auto"`` compares (wraps ``jacobian.fastest``)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self._fastest = jacobian.fastest

    def __enter__(self) -> RecordedEstimates:
        def record(estimates: dict[str, float]) -> str:
            self.last = dict(estimates)
            return self._fastest(estimates)

        jacobian.fastest = record
        return self

    def __exit__(self, *_: object) -> None:
        jacobian.fastest = self._fastest


def compare_architecture(
    args: argparse.Namespace, name: str, model: nn.Module, layer: nn.Module
) -> bool:
    """One table row: times of every way on one layer; True if all agree."""
    columns = ["first", "warm", "forward", "reverse", "loop", "plain loop", "jacrev", "jacfwd"]
    x = torch.randn(args.batch_size, 3, args.size, args.size, dtype=torch.float64)
    reference = torch.randn(args.reference, 3, args.size, args.size, dtype=torch.float64)
    insens = InactiveStateSensitivity(model, layer).fit(reference)
    frequency = insens.activation_frequency
    assert isinstance(frequency, Tensor)
    chosen: list[str] = []
    estimates: list[dict[str, float]] = []

    def first_call() -> Tensor:
        insens._jacobian_plans.clear()  # as a freshly fitted explainer
        with RecordedEstimates() as recorded:
            omega = insens.attribute(x)
        (plan,) = insens._jacobian_plans.values()
        chosen.append(plan.mode)
        estimates.append(recorded.last)
        return omega

    methods: dict[str, Callable[[], Tensor]] = {
        "first": first_call,
        "warm": lambda: insens.attribute(x),
        **{
            mode: (lambda mode=mode: insens.attribute(x, jacobian_mode=mode))
            for mode in ("forward", "reverse", "loop")
        },
        "plain loop": lambda: loop_on(model, layer, x, frequency),
        "jacrev": lambda: full_jacobian_on(torch.func.jacrev, model, layer, x, frequency),
        "jacfwd": lambda: full_jacobian_on(torch.func.jacfwd, model, layer, x, frequency),
    }
    results = {}
    for key, method in list(methods.items()):  # also warms up
        try:
            results[key] = method().detach()
        except NotImplementedError:  # forward mode where an operation has no jvp
            del methods[key]
    plain = results["plain loop"]
    scale = plain.abs().max()
    error = max(float((r - plain).abs().max() / scale.clamp(min=1e-30)) for r in results.values())
    keys = list(methods)
    times = dict(zip(keys, median_times([methods[k] for k in keys], [args.repeats] * len(keys))))
    best = min(times.get("jacrev", float("inf")), times.get("jacfwd", float("inf")))
    cells = " ".join(f"{1000 * times[k]:>8.0f}" if k in times else f"{'n/a':>8}" for k in columns)
    # the last measurement's estimates, scaled to the job (what "auto" compared)
    guess = " ".join(f"{m[0]}{1000 * t:.0f}" for m, t in estimates[-1].items())
    print(
        f"{name:<31} {frequency.numel():>6} {'/'.join(sorted(set(chosen))):>8} {guess:>18} "
        + cells
        + f" {times['warm'] / times['plain loop']:>7.2f} {times['warm'] / best:>7.2f}"
        f" {times['first'] / min(times['plain loop'], best):>7.2f} {error:>8.1e}",
        flush=True,
    )
    if scale == 0:
        print(f"{'':<31} (Omega is zero: no neuron inactive here is active on the reference)")
    return error < 1e-6


def architecture_table(args: argparse.Namespace) -> bool:
    print(
        f"Insens on narrowed real architectures: {args.size}x{args.size}x3 inputs, width "
        f"{args.width}, {args.batch_size} example(s) per call, {args.reference} reference "
        f"examples, float64, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"medians of {args.repeats} interleaved runs, ms per call"
    )
    columns = ["first", "warm", "forward", "reverse", "loop", "plain", "jacrev", "jacfwd"]
    print(
        f"{'layer':<31} {'units':>6} {'chosen':>8} {'estimates ms':>18} "
        + " ".join(f"{c:>8}" for c in columns)
        + f" {'W/loop':>7} {'W/jac':>7} {'1st/min':>7} {'rel err':>8}"
    )
    agree = [
        compare_architecture(args, name, model, layer)
        for name, model, layer in architectures(args.size, args.width)
    ]
    print(
        "first/warm: Insens's first call (strategies measured) and a later one; forward, "
        "reverse, loop: Insens with jacobian_mode forced; plain: a user's per-neuron "
        "autograd loop; jacrev/jacfwd: vmap over the batch of the whole Jacobian. "
        "W/loop, W/jac: warm Insens over the plain loop and the best full Jacobian "
        "(target <= 1); 1st/min: the first call over the better of the two. "
        "estimates: what 'auto' estimated for each strategy on its last first call "
        "(one missing: left out after its scout, or no forward-mode derivative)."
    )
    print("same Omega from all (max rel err < 1e-6):", "yes" if all(agree) else "NO")
    return all(agree)


def default_chunk(call: Callable[[], object]) -> int:
    """The chunk size the probe of ``call`` (a forced mode, default chunks) chose."""
    sizes: list[int] = []
    sizing = jacobian.default_chunk_size

    def recording(*args: int) -> int:
        sizes.append(sizing(*args))
        return sizes[-1]

    jacobian.default_chunk_size = recording
    try:
        call()
    finally:
        jacobian.default_chunk_size = sizing
    return sizes[-1]


def chunk_sweep(args: argparse.Namespace) -> None:
    """Insens with each mode forced, by ``jacobian_vectors_per_chunk``: what the default
    chunk bytes (``jacobian.CHUNK_BYTES``) were set by."""
    chunks = [16, 32, 64, 128, 256, 512]
    print(
        "Insens ms per call by rows (reverse) or columns (forward) per chunk, 1 example, "
        f"{torch.get_num_threads()} thread(s), medians of {args.repeats} interleaved runs; "
        "'default': the probe's chunk within CHUNK_BYTES, in brackets"
    )
    print(f"{'layer':<31} {'mode':>8} {'default':>12} " + " ".join(f"{c:>6}" for c in chunks))
    torch.manual_seed(0)
    two_conv = TwoConv().eval()
    layers = [
        (f"2conv {name} (float32)", two_conv, getattr(two_conv, name), torch.rand(1, *INPUT_SHAPE))
        for name in ("conv2", "fc1")
    ]
    x = torch.randn(1, 3, args.size, args.size, dtype=torch.float64)
    layers += [(n, m, layer, x) for n, m, layer in architectures(args.size, args.width)[:4]]
    for name, model, layer, inputs in layers:
        insens = InactiveStateSensitivity(model, layer)
        for mode in ("forward", "reverse"):
            calls: list[Callable[[], object]] = [
                lambda c=c, m=mode, e=insens, x=inputs: e.attribute(
                    x, weighting="uniform", jacobian_mode=m, jacobian_vectors_per_chunk=c
                )
                for c in [None, *chunks]
            ]
            default = default_chunk(calls[0])  # also warms up
            times = median_times(calls, [args.repeats] * len(calls))
            print(
                f"{name:<31} {mode:>8} {f'{1000 * times[0]:.0f} ({default})':>12} "
                + " ".join(f"{1000 * t:>6.0f}" for t in times[1:]),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--reference", type=int, default=256, help="reference examples")
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop-repeats", type=int, default=3)
    parser.add_argument("--max-seed-gb", type=float, default=4.0, help="skip jacrev above")
    parser.add_argument("--memory-batches", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--architectures",
        action="store_true",
        help="the ResNet/VGG/ViT-style table instead of 2CONV's (--repeats 3 advised)",
    )
    parser.add_argument("--size", type=int, default=16, help="--architectures: input side")
    parser.add_argument("--width", type=int, default=8, help="--architectures: base channels")
    parser.add_argument(
        "--chunk-sweep",
        action="store_true",
        help="Insens's time by chunk size on 2CONV, ResNet and VGG layers (--repeats 3 advised)",
    )
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        name, *numbers = args.memory_child
        measure_memory(name, *(int(n) for n in numbers))
        return
    if args.chunk_sweep:
        chunk_sweep(args)
        return
    if args.architectures:
        sys.exit(0 if architecture_table(args) else 1)
    ok = speed(args)
    if not args.no_memory:
        memory(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
