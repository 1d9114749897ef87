"""The dependency graph that step-wise sensitivity analysis produces: its data and queries.

:class:`GraphData` is the bottom of :mod:`captum_ssa.graph`: it imports none of
the modules that use a graph. Files (:mod:`~captum_ssa.graph.io`), masking a
model (:mod:`~captum_ssa.graph.masking`), drawing (:mod:`~captum_ssa.graph.drawing`),
class comparison (:mod:`~captum_ssa.graph.comparison`) and the interactive page
(:mod:`~captum_ssa.graph.view`) take a :class:`GraphData`; the public
:class:`~captum_ssa.graph.DependencyGraph`
(:mod:`~captum_ssa.graph.dependency_graph`) adds them as methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import networkx as nx
import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa.graph._parts import (
    Target,
    as_index_pairs,
    as_index_vector,
    check_parts,
    json_compatible,
    normalise_target,
    same_tensor,
    same_value,
)

LayerRef = Union[str, Module]


class GraphData:
    """
    The neurons, relevances, relevance matrices and edges of a dependency graph,
    checked, with the queries that read them (accessors, networkx, equality).
    :class:`~captum_ssa.graph.DependencyGraph` documents the graph and adds
    saving, loading, masking, drawing and the page.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        layers: Optional[Sequence[Module]],
        neurons: Sequence[Tensor],
        relevances: Sequence[Tensor],
        relevance_matrices: Sequence[Tensor],
        edges: Sequence[Tensor],
        target: Target = None,
        metadata: Optional[dict[str, Any]] = None,
        forward_func: Optional[Callable[..., Any]] = None,
    ) -> None:
        r"""
        Args:
            layer_names (Sequence[str]): The layers' names in
                        ``model.named_modules()``, lowest layer first; L names.
            layers (Sequence[torch.nn.Module] or None): The modules, in the
                        same order, so layers can be given as modules to the
                        accessors. None for a graph read from a file, whose
                        layers are then found by name in the model passed to
                        :meth:`mask`.
            neurons (Sequence[Tensor]): ``neurons[i]`` is the sorted 1-D
                        integer tensor of the kept neuron indices of layer
                        ``i``; ``neurons[L-1]`` is the starting set (e.g. the
                        target class).
            relevances (Sequence[Tensor]): ``relevances[i]`` is the Step III
                        vector over *all* :math:`K_i` neurons of layer ``i``;
                        for the top layer 1.0 at the starting neurons and 0
                        elsewhere.
            relevance_matrices (Sequence[Tensor]): L-1 Step II matrices;
                        ``relevance_matrices[i]`` relates lower layer ``i`` to
                        upper layer ``i+1`` and is shaped
                        ``(len(neurons[i+1]), K_i)``: row ``j`` is upper neuron
                        ``neurons[i+1][j]``, column ``k`` lower neuron ``k``.
            edges (Sequence[Tensor]): L-1 integer tensors shaped ``(E, 2)`` of
                        ``(lower index, upper index)`` pairs between layer
                        ``i`` and layer ``i+1``; both ends must be kept
                        neurons. The edge weight is read from the matrix.
            target (int or list[int], optional): The class(es) the graph was
                        built for, if any: StepwiseSensitivity records an int
                        target as it is and per-example targets as their
                        sorted distinct values (not one entry per example),
                        or as an int when they are all one class.
                        Default: None
            metadata (dict, optional): How the graph was built (the
                        ``attribute`` options; StepwiseSensitivity adds
                        ``"method"``, ``"model"``, the class name of the
                        model, and ``"num_examples"``); ``"neuron_dim"`` (an
                        int or None) tells :meth:`mask` the neuron axis of
                        the layer outputs. Default: None
            forward_func (Callable, optional): The model (or function of the
                        inputs) the graph was built from, which
                        StepwiseSensitivity records so that the graph's
                        neurons can be run again (e.g.
                        :func:`~captum_ssa.graph.neuron_examples`). Kept as
                        the attribute ``forward_func``; not saved to files nor
                        compared by ``==``. Default: None
        """
        self._layer_names = [str(name) for name in layer_names]
        self._layers = None if layers is None else list(layers)
        self._neurons = [as_index_vector(n) for n in neurons]
        self._relevances = [torch.as_tensor(r).detach().cpu() for r in relevances]
        self._relevance_matrices = [torch.as_tensor(m).detach().cpu() for m in relevance_matrices]
        self._edges = [as_index_pairs(e) for e in edges]
        self._target = normalise_target(target)
        self._metadata = dict(metadata or {})
        self.forward_func = forward_func
        check_parts(
            self._layer_names,
            self._layers,
            self._neurons,
            self._relevances,
            self._relevance_matrices,
            self._edges,
        )
        self._networkx: Optional[nx.DiGraph] = None

    # ------------------------------------------------------------------ access

    @property
    def layer_names(self) -> list[str]:
        """The layers' names, lowest first."""
        return list(self._layer_names)

    @property
    def layers(self) -> Optional[list[Module]]:
        """The layers' modules, lowest first; None for a graph read from a file."""
        return None if self._layers is None else list(self._layers)

    @property
    def target(self) -> Target:
        """The class(es) the graph was built for, or None."""
        return self._target

    @property
    def metadata(self) -> dict[str, Any]:
        """How the graph was built (the ``attribute`` options)."""
        return dict(self._metadata)

    @property
    def layer_sizes(self) -> list[int]:
        """The number of neurons :math:`K_i` of every layer, lowest first."""
        return [len(relevance) for relevance in self._relevances]

    @property
    def kept_fraction(self) -> float:
        """The fraction of the hidden layers' neurons (all layers but the top) kept."""
        hidden_sizes = self.layer_sizes[:-1]
        if not hidden_sizes:
            return 1.0
        return sum(len(n) for n in self._neurons[:-1]) / sum(hidden_sizes)

    def depth_of(self, layer: LayerRef) -> int:
        """The position of ``layer`` (a module or its name), 0 for the lowest."""
        if isinstance(layer, str):
            if layer in self._layer_names:
                return self._layer_names.index(layer)
            raise KeyError(f"no layer named {layer!r} in the graph; it has {self._layer_names}")
        if isinstance(layer, Module):
            if self._layers is None:
                raise KeyError(
                    "this graph was read from a file and knows its layers only by "
                    f"name; pass one of {self._layer_names}"
                )
            for depth, module in enumerate(self._layers):
                if module is layer:
                    return depth
            raise KeyError(f"layer {type(layer).__name__} is not one of the graph's layers")
        raise TypeError(f"a layer is a module or its name, got {type(layer).__name__}")

    def neurons(self, layer: LayerRef) -> Tensor:
        """The sorted indices of the kept neurons of ``layer`` (a module or its name)."""
        return self._neurons[self.depth_of(layer)].clone()

    def relevance(self, layer: LayerRef) -> Tensor:
        """The Step III relevance of every neuron of ``layer``, kept or not."""
        return self._relevances[self.depth_of(layer)].clone()

    def relevance_matrix(self, upper: LayerRef, lower: LayerRef) -> Tensor:
        r"""
        The Step II matrix :math:`\omega[n, k]` between two consecutive layers.

        Args:
            upper (str or torch.nn.Module): The upper layer.
            lower (str or torch.nn.Module): The layer directly below it.

        Returns:
            *Tensor* shaped ``(len(neurons(upper)), K_lower)``: row ``j`` is the
            upper neuron ``neurons(upper)[j]``, column ``k`` lower neuron ``k``.
        """
        lower_depth = self._lower_depth(upper, lower)
        return self._relevance_matrices[lower_depth].clone()

    def _lower_depth(self, upper: LayerRef, lower: LayerRef) -> int:
        """The depth of ``lower``, checking that ``upper`` is directly above it."""
        upper_depth, lower_depth = self.depth_of(upper), self.depth_of(lower)
        if upper_depth != lower_depth + 1:
            raise ValueError(
                "relevance matrices and edges relate consecutive layers, upper first: "
                f"{self._layer_names[upper_depth]!r} is not directly above "
                f"{self._layer_names[lower_depth]!r} (layers: {self._layer_names})"
            )
        return lower_depth

    def edges(self, upper: LayerRef, lower: LayerRef) -> Tensor:
        """The ``(E, 2)`` ``(lower index, upper index)`` pairs between two consecutive layers."""
        return self._edges[self._lower_depth(upper, lower)].clone()

    def edge_weights(self, upper: LayerRef, lower: LayerRef) -> Tensor:
        r"""The weight :math:`\omega[n, k]` of every edge of :meth:`edges`, in the same order."""
        return self._edge_weights(self._lower_depth(upper, lower))

    def _edge_weights(self, lower_depth: int) -> Tensor:
        pairs = self._edges[lower_depth]
        rows = torch.searchsorted(self._neurons[lower_depth + 1], pairs[:, 1].contiguous())
        return self._relevance_matrices[lower_depth][rows, pairs[:, 0]]

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a ``networkx.DiGraph`` (a fresh copy on every call)."""
        if self._networkx is None:
            self._networkx = self._build_networkx()
        return self._networkx.copy()

    def _build_networkx(self) -> nx.DiGraph:
        graph = nx.DiGraph()
        for depth, (name, kept) in enumerate(zip(self._layer_names, self._neurons)):
            for index in kept.tolist():
                graph.add_node(
                    (name, index),
                    layer=name,
                    index=index,
                    depth=depth,
                    relevance=float(self._relevances[depth][index]),
                )
        for lower, pairs in enumerate(self._edges):
            lower_name, upper_name = self._layer_names[lower], self._layer_names[lower + 1]
            for (source, sink), weight in zip(pairs.tolist(), self._edge_weights(lower).tolist()):
                graph.add_edge((lower_name, source), (upper_name, sink), weight=weight)
        return graph

    def __eq__(self, other: object) -> bool:
        """Equal neurons, relevances, matrices, edges, target and metadata (not modules, nor
        ``metadata["model"]``: the same graph computed through a wrapper of the model, a
        thread pool or DataParallel, is equal).

        NaN equals NaN here, so a graph equals its own saved and loaded copy.
        """
        if not isinstance(other, GraphData):
            return NotImplemented
        tensors = ("_neurons", "_relevances", "_relevance_matrices", "_edges")
        return (
            self._layer_names == other._layer_names
            and self._target == other._target
            and all(
                len(getattr(self, name)) == len(getattr(other, name))
                and all(map(same_tensor, getattr(self, name), getattr(other, name)))
                for name in tensors
            )
            and same_value(
                json_compatible(_without_model(self._metadata)),
                json_compatible(_without_model(other._metadata)),
            )
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kept = ", ".join(
            f"{name}: {len(n)}/{len(r)}"
            for name, n, r in zip(self._layer_names, self._neurons, self._relevances)
        )
        options = "".join(
            f", {key}={self._metadata[key]!r}"
            for key in ("relevance", "mode")
            if key in self._metadata
        )
        return (
            f"{type(self).__name__}(target={self._target!r}, neurons={{{kept}}}, "
            f"edges={sum(len(e) for e in self._edges)}{options})"
        )


def _without_model(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` less the name of the model it was computed on."""
    return {key: value for key, value in metadata.items() if key != "model"}
