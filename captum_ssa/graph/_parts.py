"""The parts a :class:`~captum_ssa.graph.DependencyGraph` is built from: normalised,
checked, compared (NaN equal to NaN) and made JSON-compatible."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

Target = Optional[Union[int, list[int]]]


def check_parts(
    layer_names: list[str],
    layers: Optional[list[Module]],
    neurons: list[Tensor],
    relevances: list[Tensor],
    relevance_matrices: list[Tensor],
    edges: list[Tensor],
) -> None:
    """Raise a clear error for parts that break :class:`DependencyGraph`'s contract."""
    depth = len(layer_names)
    if depth == 0:
        raise ValueError("a dependency graph needs at least one layer")
    if len(set(layer_names)) != depth:
        raise ValueError(f"layer names must be unique, got {layer_names}")
    counts = {
        "neurons": (len(neurons), depth, "layers"),
        "relevances": (len(relevances), depth, "layers"),
        "relevance_matrices": (len(relevance_matrices), depth - 1, "layer pairs"),
        "edges": (len(edges), depth - 1, "layer pairs"),
    }
    if layers is not None:
        counts["layers"] = (len(layers), depth, "layer names")
    for label, (given, expected, per) in counts.items():
        if given != expected:
            raise ValueError(f"{label} has {given} entries for {expected} {per}")
    for name, kept, relevance in zip(layer_names, neurons, relevances):
        if relevance.dim() != 1:
            raise ValueError(f"relevances of {name!r} must be 1-D")
        if kept.numel() and (kept.min() < 0 or kept.max() >= relevance.numel()):
            raise ValueError(
                f"neurons of {name!r} must lie in [0, {relevance.numel()}), got {kept.tolist()}"
            )
        if (kept[1:] <= kept[:-1]).any():
            raise ValueError(f"neurons of {name!r} must be sorted and unique")
    for lower in range(depth - 1):
        matrix = relevance_matrices[lower]
        shape = (len(neurons[lower + 1]), len(relevances[lower]))
        if tuple(matrix.shape) != shape:
            raise ValueError(
                f"relevance_matrices[{lower}] ({layer_names[lower + 1]} x "
                f"{layer_names[lower]}) must be shaped {shape}, got "
                f"{tuple(matrix.shape)}"
            )
        if len(unique_pairs(edges[lower])) != len(edges[lower]):
            raise ValueError(f"edges[{lower}] lists a (lower, upper) pair twice")
        for end, layer in ((0, lower), (1, lower + 1)):
            stray = ~torch.isin(edges[lower][:, end], neurons[layer])
            if stray.any():
                raise ValueError(
                    f"edges[{lower}] reach neurons of {layer_names[layer]!r} "
                    f"that are not in the graph: "
                    f"{edges[lower][stray, end].unique().tolist()}"
                )


def unique_pairs(pairs: Tensor) -> Tensor:
    """``pairs.unique(dim=0)`` for (E, 2) integer pairs: each pair once, sorted by
    the first column, then the second.

    ``unique(dim=0)`` compares rows one by one on the CPU (tens of thousands of
    ``select`` calls for one graph's edges). One int64 key per pair, ordered as
    the pairs are, makes it one 1-D ``unique``; pairs whose key would not fit in
    int64 (spans whose product passes 2**63) keep the row-wise one.
    """
    if pairs.shape[0] == 0:
        return pairs.unique(dim=0)
    low, high = (bound.tolist() for bound in torch.aminmax(pairs, dim=0))
    first_span, second_span = high[0] - low[0] + 1, high[1] - low[1] + 1
    if first_span * second_span > 2**63:
        return pairs.unique(dim=0)
    # the differences fit in int64 once the product does; int64 arithmetic wraps, so
    # an intermediate out of range still ends at the right key
    as_int64 = pairs.long()
    keys = ((as_int64[:, 0] - low[0]) * second_span + (as_int64[:, 1] - low[1])).unique()
    first = torch.div(keys, second_span, rounding_mode="floor") + low[0]
    second = keys.remainder(second_span) + low[1]
    return torch.stack([first, second], 1).to(pairs.dtype)


def as_index_vector(indices: Any) -> Tensor:
    return torch.as_tensor(indices, dtype=torch.long).detach().cpu().reshape(-1)


def as_index_pairs(pairs: Any) -> Tensor:
    tensor = torch.as_tensor(pairs, dtype=torch.long).detach().cpu()
    if tensor.numel() == 0:
        return tensor.reshape(0, 2)
    if tensor.dim() != 2 or tensor.shape[1] != 2:
        raise ValueError(
            f"edges must be shaped (E, 2) as (lower, upper) pairs, got {tuple(tensor.shape)}"
        )
    return tensor


def normalise_target(target: Any) -> Target:
    if isinstance(target, (Tensor, np.ndarray)):
        target = target.tolist()
    if isinstance(target, (tuple, list)):
        return [int(t) for t in target]
    return None if target is None else int(target)


def same_tensor(first: Tensor, second: Tensor) -> bool:
    """Same dtype, shape and values, NaN equal to NaN."""
    if first.dtype != second.dtype or first.shape != second.shape:
        return False
    if not (first.is_floating_point() or first.is_complex()):
        return bool(torch.equal(first, second))
    return bool(((first == second) | (first.isnan() & second.isnan())).all())


def same_value(first: Any, second: Any) -> bool:
    """``==`` for JSON-like values, NaN equal to NaN."""
    if isinstance(first, float) and isinstance(second, float):
        return first == second or (first != first and second != second)
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(
            same_value(first[key], second[key]) for key in first
        )
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(map(same_value, first, second))
    return bool(first == second)


def json_compatible(value: Any) -> Any:
    """``value`` with tuples as lists, tensors as lists and other objects by name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(key): json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_compatible(item) for item in value]
    if isinstance(value, Tensor):
        return value.tolist()
    named = (
        value
        if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__"))
        else type(value)
    )
    return f"{named.__module__}.{named.__qualname__}"
