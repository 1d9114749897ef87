"""The main job: train a small CNN on scikit-learn's digits and explain it.

Run from the repository root (no arguments, no download)::

    python tutorials/demo.py            # writes into out/demo/

Each part below writes its figures into the output folder and returns lines
for ``summary.txt``, which is also printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")  # no screen needed

import demo_layered_influence
import demo_stepwise_sensitivity
import demo_switched_projection
import ssa_circles
from digits import accuracy, load_digits_tensors, train_digits_cnn

PARTS = [demo_switched_projection, demo_stepwise_sensitivity, demo_layered_influence]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("out/demo"))
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)

    # the models are tiny: one thread is faster than several (no thread start-up or spinning
    # per small matrix product), several times faster on a busy machine
    torch.set_num_threads(1)
    started = time.perf_counter()
    digits = load_digits_tensors()
    model = train_digits_cnn(digits.x_train, digits.y_train)
    summary = [
        "captum-ssa demo on scikit-learn's digits (8x8, 10 classes)",
        f"DigitsCNN test accuracy: {accuracy(model, digits.x_test, digits.y_test):.3f}",
    ]
    for part in PARTS:
        summary += ["", *part.run(model, digits, args.output_dir)]
    # the SSA paper's own toy problem, in the fast mode CI runs (~2 s)
    circles = ssa_circles.reproduce(ssa_circles.FAST_SEEDS, ssa_circles.FAST_EPOCHS)
    ssa_circles.write_markdown(circles, args.output_dir)
    summary += ["", *ssa_circles.demo_lines(circles)]
    summary += ["", f"total time: {time.perf_counter() - started:.1f} s"]

    text = "\n".join(summary) + "\n"
    (args.output_dir / "summary.txt").write_text(text)
    print(text)
    print(f"results written to {args.output_dir}/")


if __name__ == "__main__":
    main()
