"""Demo part: switched-weight and Insens heatmaps for the digits CNN."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from captum.attr import LayerActivation, visualization
from digits import Digits, DigitsCNN
from torch import Tensor

from captum_ssa import InactiveStateSensitivity, SwitchedLinearProjection

EXAMPLES = 4


def _as_image(tensor: Tensor) -> np.ndarray:
    """(1, H, W) tensor -> (H, W, 1) array, Captum's visualisation layout."""
    return tensor.detach().permute(1, 2, 0).cpu().numpy()


def _heatmap(fig: plt.Figure, ax: plt.Axes, attribution: Tensor, title: str) -> None:
    visualization.visualize_image_attr(
        _as_image(attribution),
        method="heat_map",
        sign="all",
        cmap="bwr",  # red positive, blue negative, as in the paper
        plt_fig_axis=(fig, ax),
        use_pyplot=False,
        title=title,
    )


def run(model: DigitsCNN, digits: Digits, output_dir: Path) -> list[str]:
    x = digits.x_test[:EXAMPLES]
    predicted = model(x).argmax(1)

    # target picks each example's predicted-class logit, as in Captum.
    slp = SwitchedLinearProjection(model, model.fc2)
    projection = slp.project(x, target=predicted)
    contributions = slp.decompose(x, target=predicted)
    projection_error = (
        ((projection.weights * x).sum((1, 2, 3)) + projection.bias - projection.activity)
        .abs()
        .max()
    )
    decomposition_error = (contributions.sum((1, 2, 3)) - projection.activity).abs().max()

    layers = {"conv1": model.conv1, "conv2": model.conv2, "fc1": model.fc1}
    insens = InactiveStateSensitivity(model, list(layers.values())).fit(digits.x_train)
    started = time.perf_counter()
    omegas = insens.attribute(x)
    insens_seconds = time.perf_counter() - started
    outputs = LayerActivation(model, list(layers.values())).attribute(x)
    inactive = {name: (output <= 0).float().mean().item() for name, output in zip(layers, outputs)}

    columns = 3 + len(layers)
    fig, axes = plt.subplots(EXAMPLES, columns, figsize=(2.2 * columns, 2.3 * EXAMPLES))
    for row in range(EXAMPLES):
        axes[row, 0].imshow(x[row, 0], cmap="gray")
        axes[row, 0].set_title(f"input, predicted {predicted[row].item()}", fontsize=8)
        axes[row, 0].axis("off")
        _heatmap(fig, axes[row, 1], projection.weights[row], "switched weights w")
        _heatmap(fig, axes[row, 2], contributions[row], "contributions (x-c)w")
        for column, (name, omega) in enumerate(zip(layers, omegas), start=3):
            _heatmap(fig, axes[row, column], omega[row], f"Insens {name}")
    fig.suptitle("Predicted-class logit as a switched linear projection, and Insens per layer")
    fig.tight_layout()
    figure_path = output_dir / "switched_projection_insens.png"
    fig.savefig(figure_path, dpi=110)
    plt.close(fig)

    return [
        "SwitchedLinearProjection of the predicted-class logit (fc2):",
        f"  max |<w,x> + b - activity|      = {projection_error:.2e}",
        f"  max |sum contributions - activity| = {decomposition_error:.2e}",
        "InactiveStateSensitivity (frequency-weighted, fitted on the training set):",
        "  inactive fraction per layer: "
        + ", ".join(f"{name} {value:.2f}" for name, value in inactive.items()),
        f"  time for {EXAMPLES} examples x {len(layers)} layers: {insens_seconds:.2f} s",
        f"  heatmaps: {figure_path}",
    ]
