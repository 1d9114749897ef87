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
    flat = model.up_to(name, x).flatten(1)
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
    chunk = default_chunk_size(batch, widest_activation(model, name, x), 4, mode)

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
            default = default_chunk_size(batch, widest_activation(model, name, x), 4, mode)
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
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        name, *numbers = args.memory_child
        measure_memory(name, *(int(n) for n in numbers))
        return
    ok = speed(args)
    if not args.no_memory:
        memory(args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
