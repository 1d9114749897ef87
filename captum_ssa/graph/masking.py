"""Running a model as a dependency graph: the neurons outside it output zero.

:meth:`DependencyGraph.mask <captum_ssa.graph.DependencyGraph.mask>` documents
it; graph evaluation (precision, ablations) runs models through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.compiled import eager_or_refused
from captum_ssa._utils.hooks import model_of, modules_by_name, neuron_axis

if TYPE_CHECKING:
    from captum_ssa.graph.model import GraphData


@contextmanager
def mask(graph: GraphData, model: Any) -> Iterator[Any]:
    """Zero, in ``model``, the neurons of ``graph``'s hidden layers (all but the
    top) that are not in the graph, by forward hooks removed on leaving."""
    modules = graph_modules(graph, model)
    handles = []
    # a compiled model calls no hook: in the block it runs as written
    with eager_or_refused(model):
        try:
            for depth, module in enumerate(modules[:-1]):
                handles.append(module.register_forward_hook(zeroing_hook(graph, depth)))
            yield model
        finally:
            for handle in handles:
                handle.remove()


def graph_modules(graph: GraphData, model: Any) -> list[Module]:
    """The graph's layers in ``model``: the same modules, or found by name (the
    user's names, as the graph has them, or ``named_modules()``'s)."""
    owner = model_of(model)
    if owner is None:
        raise TypeError(
            f"mask needs the torch.nn.Module the graph was built on, got {type(model).__name__}"
        )
    members = {id(module) for module in owner.modules()}
    by_name = modules_by_name(owner)
    layers = graph.layers
    modules = []
    for depth, name in enumerate(graph.layer_names):
        known = None if layers is None else layers[depth]
        if known is not None and id(known) in members:
            modules.append(known)
        elif name in by_name:
            modules.append(by_name[name])
        else:
            raise ValueError(
                f"layer {name!r} of the graph is not in the model {type(owner).__name__}"
            )
    return modules


def zeroing_hook(graph: GraphData, depth: int) -> Callable[[Module, Any, Any], Tensor]:
    """A forward hook that zeroes the neurons of layer ``depth`` outside the graph
    along the neuron axis (dim 1, or ``metadata["neuron_dim"]``)."""
    name, size = graph.layer_names[depth], graph.layer_sizes[depth]
    kept = torch.zeros(size, dtype=torch.bool)
    kept[graph.neurons(name)] = True
    neuron_dim = graph.metadata.get("neuron_dim")

    def hook(_module: Module, _args: Any, output: Any) -> Tensor:
        axis = neuron_dim if neuron_dim is not None else 1
        fits = isinstance(output, Tensor) and output.dim() >= 2
        if fits:
            axis = neuron_axis(neuron_dim, output.dim(), name)
            fits = output.shape[axis] == size
        if not fits:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output)
            raise ValueError(
                f"layer {name!r} of the graph has {size} neurons along dim {axis}, but "
                f"its output in this model is {shape}; was the graph built on "
                "another model?"
            )
        broadcast = [1] * output.dim()
        broadcast[axis] = size
        keep = kept.to(output.device).reshape(broadcast)
        return torch.where(keep, output, torch.zeros((), dtype=output.dtype, device=output.device))

    return hook
