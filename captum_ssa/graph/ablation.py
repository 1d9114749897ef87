"""The ablation gold standard's pieces: zero one neuron per copy of the examples.

:func:`~captum_ssa.graph.evaluation.ablation_importance` repeats a piece of
the examples once per neuron of a group and zeroes the ``j``-th neuron in the
``j``-th copy with a forward hook, so one forward pass ablates a whole group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Union

import torch
from torch import Tensor
from torch.nn import Module
from torch.nn.functional import cross_entropy

from captum_ssa._utils.batches import Batch
from captum_ssa._utils.hooks import check_layers_in_model, modules_by_name, no_grad_capture
from captum_ssa._utils.model_output import output_tensor


@lru_cache(maxsize=64)
def ablation_layout(examples: int, neurons: int, rows: int) -> tuple[int, int]:
    """``(examples per pass, ablated neurons per pass)`` for ``examples`` inputs and
    ``neurons`` ablations within ``rows`` rows per forward pass: the split with the
    fewest passes and, among those, the most neurons per pass."""
    best = (math.inf, 1, 1)
    for copies in range(1, min(neurons, rows) + 1):
        per_pass = min(examples, rows // copies)
        passes = math.ceil(examples / per_pass) * math.ceil(neurons / copies)
        if passes <= best[0]:
            best = (passes, per_pass, copies)
    return best[1], best[2]


def add_ablated_losses(
    totals: Tensor,
    module: Module,
    model: Callable[..., Any],
    piece: Batch,
    size: int,
    neurons_per_pass: int,
    metric: str,
) -> None:
    """Add to ``totals[k]`` the piece's summed loss with neuron ``k`` zeroed, for
    every ``k``, ``neurons_per_pass`` neurons per forward pass."""
    count = piece.size
    assert piece.labels is not None
    truth = piece.labels
    for first in range(0, size, neurons_per_pass):
        ablated = torch.arange(first, min(first + neurons_per_pass, size))
        copies = len(ablated)
        handle = module.register_forward_hook(_ablation_hook(ablated, size, count))
        try:
            outputs = model(*(_repeat(t, copies) for t in piece.inputs))
        finally:
            handle.remove()
        scores = output_tensor(outputs, "ablation_importance")
        per_row = metric_losses(scores, truth.repeat(copies), metric)
        totals[first : first + copies] += per_row.reshape(copies, count).sum(1)


def metric_losses(outputs: Tensor, labels: Tensor, metric: str) -> Tensor:
    """Per-example loss in float64 on the CPU: 1 for a wrong prediction
    (``"accuracy"``), or the cross-entropy of the outputs as logits (``"loss"``)."""
    labels = labels.to(outputs.device)
    if metric == "accuracy":
        return (outputs.argmax(1) != labels).double().cpu()
    return cross_entropy(outputs.double(), labels, reduction="none").cpu()


def resolve_layer(model: Module, layer: Union[str, Module]) -> Module:
    if isinstance(layer, str):
        modules = modules_by_name(model)
        if layer not in modules:
            raise ValueError(
                f"no layer named {layer!r} in {type(model).__name__}: layer must be a module "
                "of the model or its name in model.named_modules()"
            )
        return modules[layer]
    check_layers_in_model(model, [layer])
    return layer


def neuron_count(model: Callable[..., Any], layer: Module, inputs: tuple[Tensor, ...]) -> int:
    """The size of dim 1 of the layer's output, from one example."""
    (output,) = no_grad_capture(model, tuple(t[:1] for t in inputs), [layer])
    if output.dim() < 2:
        raise ValueError(
            f"layer must output (N, neurons, ...) with the neurons along dim 1, got an output "
            f"shaped {tuple(output.shape)}"
        )
    return output.shape[1]


def _repeat(tensor: Tensor, copies: int) -> Tensor:
    return tensor.repeat(copies, *([1] * (tensor.dim() - 1)))


def _ablation_hook(ablated: Tensor, size: int, examples: int) -> Any:
    """Zero neuron ``ablated[j]`` in the ``j``-th copy of the examples."""

    def hook(_module: Module, _args: Any, output: Tensor) -> Tensor:
        copies = len(ablated)
        keep = torch.ones(copies, size, dtype=torch.bool, device=output.device)
        keep[torch.arange(copies), ablated.to(output.device)] = False
        keep = keep.repeat_interleave(examples, dim=0)
        keep = keep.reshape(copies * examples, size, *([1] * (output.dim() - 2)))
        return torch.where(keep, output, torch.zeros((), dtype=output.dtype, device=output.device))

    return hook
