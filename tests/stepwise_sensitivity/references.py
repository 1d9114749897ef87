"""Plain references for StepwiseSensitivity: slow, loop-based, obviously right.

The reference runs one full forward and backward pass per upper neuron and per
example, and does Steps II-IV with Python loops and NumPy. Also the small test
models they are checked on.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn

from captum_ssa._core.stepwise_sensitivity import (
    StepwiseSensitivity,
)
from captum_ssa.graph import DependencyGraph
from tests.models import build

# ---------------------------------------------------------------- test models


class DirectCNN(nn.Module):
    """Convs whose weights connect the listed layers directly (no pooling between)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(4 * 3 * 3, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(hidden.flatten(1))))


def case(name: str) -> tuple[nn.Module, list[nn.Module], tuple[int, ...], dict[str, Any]]:
    """A model, its listed layers, its input shape and the starting neurons."""
    if name == "direct_cnn":
        torch.manual_seed(3)
        model = DirectCNN().eval()
        return model, [model.conv1, model.conv2, model.fc1, model.fc2], (2, 7, 7), {"target": 1}
    if name == "residual_blocks":  # the block layers only: a top layer that is not the output
        model, layers, shape = build("residual", 0)
        chosen = [layers["fc_in"], layers["block1"], layers["block2"]]
        return model, chosen, shape, {"top_neurons": [0, 4]}
    model, layers, shape = build(name, 0)
    return model, list(layers.values()), shape, {"target": 1}


# ---------------------------------------------------------------- the reference


def capture(model: nn.Module, layers: list[nn.Module], x: Tensor) -> list[Tensor]:
    """The layers' outputs for ``x``; the network continues on clones (in-place ReLU)."""
    outputs: dict[int, Tensor] = {}

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        outputs[id(module)] = output
        return output.clone()

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [outputs[id(layer)] for layer in layers]


def plain_weight_row(upper: nn.Module, neuron: int, lower_size: int, absolute: bool) -> Tensor:
    """|W[n, k]| for every lower neuron k, written out with loops."""
    weight = upper.weight.detach()
    row = torch.zeros(lower_size, dtype=weight.dtype)
    if isinstance(upper, nn.Linear):
        columns = weight.shape[1] // lower_size
        for k in range(lower_size):
            block = weight[neuron, k * columns : (k + 1) * columns]
            row[k] = (block.abs() if absolute else block).mean()
        return row
    per_group_in = weight.shape[1]
    group = neuron // (weight.shape[0] // upper.groups)
    for k in range(lower_size):
        if group * per_group_in <= k < (group + 1) * per_group_in:
            kernel = weight[neuron, k - group * per_group_in]
            row[k] = (kernel.abs() if absolute else kernel).mean()
    return row


def reference_step_one(
    model: nn.Module,
    lower: nn.Module,
    upper: nn.Module,
    x: Tensor,
    neuron: int,
    relevance: str,
    absolute: bool,
    neuron_dim: Optional[int] = None,
    weighted: Optional[nn.Module] = None,
) -> np.ndarray:
    """omega[i, k] for one upper neuron: one forward and backward per example.

    ``neuron_dim`` names the neuron axis of both layers' outputs (None: dim 1);
    ``weighted`` is the Linear/Conv between them (None: the upper layer). The
    paper's presets whose absolute value comes after the mean over the data
    ("activations_abs", "weight_act_abs") give signed rows here.
    """
    weighted = upper if weighted is None else weighted

    def neurons_first(example: Tensor) -> Tensor:  # one example's output, neurons at dim 0
        axis = 1 if neuron_dim is None else neuron_dim % (example.dim() + 1)
        return example.movedim(axis - 1, 0)

    rows = []
    for i in range(len(x)):
        lower_output, upper_output = capture(model, [lower, upper], x[i : i + 1].clone())
        activation = neurons_first(lower_output[0].detach())
        size = activation.shape[0]

        def over_positions(values: Tensor, size: int = size) -> Tensor:
            return values.reshape(size, -1).mean(1)

        mean_activation = over_positions(activation)
        if absolute:
            mean_activation = mean_activation.abs()
        if relevance in ("gradient", "gradient_x_activation"):
            activity = neurons_first(upper_output[0])[neuron].mean()
            (grad,) = torch.autograd.grad(activity, lower_output)
            grad = neurons_first(grad[0])
            grad = grad * activation if relevance == "gradient_x_activation" else grad
            row = over_positions(grad.abs() if absolute else grad)
        elif relevance == "gradients":  # the paper's: |gradient|
            activity = neurons_first(upper_output[0])[neuron].mean()
            (grad,) = torch.autograd.grad(activity, lower_output)
            row = over_positions(neurons_first(grad[0]).abs())
        elif relevance == "activation":
            row = mean_activation
        elif relevance == "activations_abs":  # signed here, |mean over the data| later
            row = over_positions(activation)
        elif relevance == "weight":
            row = plain_weight_row(weighted, neuron, size, absolute)
        elif relevance == "weight_abs":
            row = plain_weight_row(weighted, neuron, size, True)
        elif relevance == "weight_activation":
            row = plain_weight_row(weighted, neuron, size, absolute) * mean_activation
        elif relevance == "weight_act_abs":  # signed activation, |mean over the data| later
            row = plain_weight_row(weighted, neuron, size, True) * over_positions(activation)
        else:  # LayerIntegratedGradients between the two layers, one example at a time

            def activity_of_upper(inputs: Tensor) -> Tensor:
                (output,) = capture(model, [upper], inputs)
                return output.reshape(output.shape[0], output.shape[1], -1).mean(2)

            attribution = LayerIntegratedGradients(activity_of_upper, lower).attribute(
                x[i : i + 1], target=neuron, n_steps=10
            )[0]
            row = over_positions(attribution.abs() if absolute else attribution)
        rows.append(row.detach().double().numpy())
    return np.stack(rows)


def most_relevant(values: np.ndarray, percentile: float, branching: Optional[int]) -> list[int]:
    if branching is not None:
        return sorted(sorted(range(len(values)), key=lambda k: (-values[k], k))[:branching])
    if not values.any():  # nothing relevant: nothing kept
        return []
    if percentile == 0:
        return list(range(len(values)))
    cut = np.percentile(values, percentile)
    return [k for k in range(len(values)) if values[k] > cut or values[k] == values.max()]


def reference_graph(
    model: nn.Module,
    layers: list[nn.Module],
    x: Tensor,
    start: list[int],
    examples_of: Optional[dict[int, list[int]]] = None,
    relevance: str = "gradient",
    absolute: bool = True,
    aggregation: str = "mean",
    mode: str = "global",
    percentile: float = 50,
    branching: Optional[int] = None,
    max_neurons: Optional[int] = None,
    neuron_dim: Optional[int] = None,
    weighted: Optional[list[nn.Module]] = None,
    upper_aggregation: str = "mean",
) -> dict[str, Any]:
    """Neurons, edges, relevance vectors and matrices of SSA, computed plainly.

    ``weighted[upper]`` is the Linear/Conv below listed layer ``upper`` (None:
    the listed layers are the weighted ones)."""
    upper_set = sorted(start)
    kept = {len(layers) - 1: upper_set}
    vectors, matrices, edges = {}, {}, {}
    for upper in range(len(layers) - 1, 0, -1):
        lower = upper - 1
        matrix = []
        for neuron in upper_set:
            omega = reference_step_one(
                model,
                layers[lower],
                layers[upper],
                x,
                neuron,
                relevance,
                absolute,
                neuron_dim,
                None if weighted is None else weighted[upper],
            )
            if examples_of is not None and upper == len(layers) - 1:
                omega = omega[examples_of[neuron]]
            if aggregation == "tukey":
                first, third = np.percentile(omega, [25, 75], axis=1, keepdims=True)
                omega = (omega > third + 1.5 * (third - first)).astype(float)
            row = omega.mean(0)
            matrix.append(np.abs(row) if relevance in ABSOLUTE_OF_MEAN else row)
        if not upper_set:  # nothing kept above: nothing below either
            (output,) = capture(model, [layers[lower]], x[:1])
            size = output.shape[1 if neuron_dim is None else neuron_dim % output.dim()]
            kept[lower], vectors[lower], matrices[lower], edges[lower] = (
                [],
                np.zeros(size),
                np.zeros((0, size)),
                set(),
            )
            continue
        matrix_array = np.array(matrix)
        vector = matrix_array.mean(0)
        if upper_aggregation == "relevance_weighted":
            vector = weighted_upper_aggregation(
                matrix_array,
                [1.0] * len(upper_set)
                if upper == len(layers) - 1
                else [vectors[upper][n] for n in upper_set],
            )
        if mode == "global":
            chosen = most_relevant(vector, percentile, branching)
            if max_neurons is not None and len(chosen) > max_neurons:
                chosen = sorted(sorted(chosen, key=lambda k: (-vector[k], k))[:max_neurons])
            pairs = {(k, n) for k in chosen for n in upper_set}
        else:
            choices = {
                n: most_relevant(matrix_array[j], percentile, branching)
                for j, n in enumerate(upper_set)
            }
            chosen = sorted(set().union(*choices.values()))
            if max_neurons is not None and len(chosen) > max_neurons:
                count = {k: sum(k in c for c in choices.values()) for k in chosen}
                weight = {
                    k: sum(matrix_array[j][k] for j, n in enumerate(upper_set) if k in choices[n])
                    for k in chosen
                }
                ranked = sorted(chosen, key=lambda k: (-count[k], -weight[k], k))
                chosen = sorted(ranked[:max_neurons])
            pairs = {(k, n) for n in upper_set for k in choices[n] if k in chosen}
        kept[lower], vectors[lower], matrices[lower], edges[lower] = (
            chosen,
            vector,
            matrix_array,
            pairs,
        )
        upper_set = chosen
    return {"neurons": kept, "vectors": vectors, "matrices": matrices, "edges": edges}


def weighted_upper_aggregation(matrix: np.ndarray, weights: list[float]) -> np.ndarray:
    """r[k] = sum_n w_n matrix[n, k] / sum_n w_n, one term at a time (the plain mean
    when every weight is zero)."""
    total = sum(weights)
    if total == 0:
        return matrix.mean(0)
    vector = np.zeros(matrix.shape[1])
    for k in range(matrix.shape[1]):
        for row, weight in enumerate(weights):
            vector[k] += weight * matrix[row, k]
    return vector / total


def assert_matches_reference(graph: DependencyGraph, expected: dict[str, Any]) -> None:
    names = graph.layer_names
    for depth, name in enumerate(names):
        assert graph.neurons(name).tolist() == expected["neurons"][depth], name
    for lower in range(len(names) - 1):
        upper_name, lower_name = names[lower + 1], names[lower]
        np.testing.assert_allclose(
            graph.relevance(lower_name).double().numpy(),
            expected["vectors"][lower],
            rtol=1e-5,
            atol=1e-7,
        )
        np.testing.assert_allclose(
            graph.relevance_matrix(upper_name, lower_name).double().numpy(),
            expected["matrices"][lower],
            rtol=1e-5,
            atol=1e-7,
        )
        pairs = {tuple(p) for p in graph.edges(upper_name, lower_name).tolist()}
        assert pairs == expected["edges"][lower], (upper_name, lower_name)


def starting_set(model: nn.Module, layers: list[nn.Module], start: dict[str, Any]) -> list[int]:
    chosen = start.get("target", start.get("top_neurons"))
    return [chosen] if isinstance(chosen, int) else list(chosen)


# Each relevance and model meets both aggregations and both modes.
OPTIONS = {
    "mean_global": {"aggregation": "mean", "mode": "global"},
    "tukey_global_capped": {
        "aggregation": "tukey",
        "mode": "global",
        "percentile": 30,
        "max_neurons": 3,
    },
    "mean_local_top": {"aggregation": "mean", "mode": "local", "branching": 2, "max_neurons": 3},
    "tukey_local_percentile": {"aggregation": "tukey", "mode": "local", "percentile": 60},
}
GRADIENT_FAMILY = ("gradient", "activation", "gradient_x_activation")
ALL_RELEVANCES = (*GRADIENT_FAMILY, "weight", "weight_activation")
PAPER_PRESETS = ("weight_abs", "activations_abs", "weight_act_abs", "gradients")
ABSOLUTE_OF_MEAN = ("activations_abs", "weight_act_abs")
CASES = [
    (name, relevance)
    for name in ("mlp", "direct_cnn", "residual_blocks")
    for relevance in ALL_RELEVANCES
] + [(name, relevance) for name in ("cnn", "residual") for relevance in GRADIENT_FAMILY]


def graph_and_reference(model_name: str, relevance: Any, options: str) -> DependencyGraph:
    """SSA's graph on four examples, checked against the plain reference."""
    model, layers, shape, start = case(model_name)
    torch.manual_seed(7)
    x = torch.randn(4, *shape)
    kwargs = {"relevance": relevance, **OPTIONS[options]}
    graph = StepwiseSensitivity(model, layers).attribute(x, **start, **kwargs)
    expected = reference_graph(model, layers, x, starting_set(model, layers, start), **kwargs)
    assert_matches_reference(graph, expected)
    return graph


# On four examples of these small networks Tukey's fences often find no outlier
# at all: the layer then keeps no neuron and SSA says so (the reference agrees).
