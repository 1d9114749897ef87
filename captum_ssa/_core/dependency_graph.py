"""The dependency graph that step-wise sensitivity analysis produces."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import networkx as nx
import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.hooks import model_of, neuron_axis

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LayerRef = Union[str, Module]
Target = Optional[Union[int, list[int]]]

# The graph-level attribute of a saved file that holds everything ``load`` needs.
_STATE_KEY = "dependency_graph"
_LOADABLE = (".graphml", ".json")
_SAVABLE = (".graphml", ".gexf", ".json", ".dot")


class DependencyGraph:
    r"""
    The neurons of every layer that a decision rests on, and the links between
    them: the output of :class:`StepwiseSensitivity`.

    A neuron is one position along the neuron axis of a layer's output (a
    ``Linear`` unit, or a conv channel): dim 1, or ``metadata["neuron_dim"]``
    when SSA was given one (e.g. -1 for the features of a token sequence).
    As a :func:`networkx.DiGraph` (:meth:`to_networkx`) the nodes are
    ``(layer_name, index)`` tuples with attributes ``layer`` (str),
    ``index`` (int), ``depth`` (int, 0 = lowest layer) and ``relevance``
    (float, the Step III value); edges go from a lower neuron to an upper
    neuron (the direction of computation) with attribute
    ``weight``, the Step II relevance :math:`\omega[n, k]`.

    Besides the kept neurons the graph stores, for every layer, the Step III
    relevance of *all* its neurons (:meth:`relevance`) and the Step II matrix
    between consecutive layers (:meth:`relevance_matrix`), so rankings can be
    compared with other importance measures (e.g. :func:`ablation_importance`).

    Paper: Botty Dimanov and Mateja Jamnik, *Step-wise Sensitivity Analysis:
    Identifying Partially Distributed Representations for Interpretable Deep
    Learning*, 2018 (OpenReview SyeBqsRctm).

    Examples::

        >>> graph = StepwiseSensitivity(net, [net.conv1, net.fc1, net.fc2]).attribute(
        ...     x_of_class_3, target=3)
        >>> graph.neurons("fc1")              # kept units of fc1, sorted
        >>> graph.save("class3.graphml")
        >>> with graph.mask(net):             # the graph as a classifier
        ...     net(x).argmax(1)
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
                        sorted distinct values (not one entry per example).
                        Default: None
            metadata (dict, optional): How the graph was built (the
                        ``attribute`` options); ``"neuron_dim"`` (an int or
                        None) tells :meth:`mask` the neuron axis of the
                        layer outputs. Default: None
        """
        self._layer_names = [str(name) for name in layer_names]
        self._layers = None if layers is None else list(layers)
        self._neurons = [_as_index_vector(n) for n in neurons]
        self._relevances = [torch.as_tensor(r).detach().cpu() for r in relevances]
        self._relevance_matrices = [torch.as_tensor(m).detach().cpu() for m in relevance_matrices]
        self._edges = [_as_index_pairs(e) for e in edges]
        self._target = _normalise_target(target)
        self._metadata = dict(metadata or {})
        self._check()
        self._networkx: Optional[nx.DiGraph] = None

    def _check(self) -> None:
        """Raise a clear error for arguments that break the constructor's contract."""
        depth = len(self._layer_names)
        if depth == 0:
            raise ValueError("a dependency graph needs at least one layer")
        if len(set(self._layer_names)) != depth:
            raise ValueError(f"layer names must be unique, got {self._layer_names}")
        counts = {
            "neurons": (len(self._neurons), depth, "layers"),
            "relevances": (len(self._relevances), depth, "layers"),
            "relevance_matrices": (len(self._relevance_matrices), depth - 1, "layer pairs"),
            "edges": (len(self._edges), depth - 1, "layer pairs"),
        }
        if self._layers is not None:
            counts["layers"] = (len(self._layers), depth, "layer names")
        for label, (given, expected, per) in counts.items():
            if given != expected:
                raise ValueError(f"{label} has {given} entries for {expected} {per}")
        for name, kept, relevance in zip(self._layer_names, self._neurons, self._relevances):
            if relevance.dim() != 1:
                raise ValueError(f"relevances of {name!r} must be 1-D")
            if kept.numel() and (kept.min() < 0 or kept.max() >= relevance.numel()):
                raise ValueError(
                    f"neurons of {name!r} must lie in [0, {relevance.numel()}), got {kept.tolist()}"
                )
            if (kept[1:] <= kept[:-1]).any():
                raise ValueError(f"neurons of {name!r} must be sorted and unique")
        for lower in range(depth - 1):
            matrix = self._relevance_matrices[lower]
            shape = (len(self._neurons[lower + 1]), len(self._relevances[lower]))
            if tuple(matrix.shape) != shape:
                raise ValueError(
                    f"relevance_matrices[{lower}] ({self._layer_names[lower + 1]} x "
                    f"{self._layer_names[lower]}) must be shaped {shape}, got "
                    f"{tuple(matrix.shape)}"
                )
            if len(self._edges[lower].unique(dim=0)) != len(self._edges[lower]):
                raise ValueError(f"edges[{lower}] lists a (lower, upper) pair twice")
            for end, layer in ((0, lower), (1, lower + 1)):
                stray = ~torch.isin(self._edges[lower][:, end], self._neurons[layer])
                if stray.any():
                    raise ValueError(
                        f"edges[{lower}] reach neurons of {self._layer_names[layer]!r} "
                        f"that are not in the graph: "
                        f"{self._edges[lower][stray, end].unique().tolist()}"
                    )

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
            self._networkx = self._build_networkx(lambda name, index: (name, index))
        return self._networkx.copy()

    def _build_networkx(self, node_id: Callable[[str, int], Any]) -> nx.DiGraph:
        graph = nx.DiGraph()
        for depth, (name, kept) in enumerate(zip(self._layer_names, self._neurons)):
            for index in kept.tolist():
                graph.add_node(
                    node_id(name, index),
                    layer=name,
                    index=index,
                    depth=depth,
                    relevance=float(self._relevances[depth][index]),
                )
        for lower, pairs in enumerate(self._edges):
            lower_name, upper_name = self._layer_names[lower], self._layer_names[lower + 1]
            for (source, sink), weight in zip(pairs.tolist(), self._edge_weights(lower).tolist()):
                graph.add_edge(
                    node_id(lower_name, source), node_id(upper_name, sink), weight=weight
                )
        return graph

    def __eq__(self, other: object) -> bool:
        """Equal neurons, relevances, matrices, edges, target and metadata (not modules).

        NaN equals NaN here, so a graph equals its own saved and loaded copy.
        """
        if not isinstance(other, DependencyGraph):
            return NotImplemented
        tensors = ("_neurons", "_relevances", "_relevance_matrices", "_edges")
        return (
            self._layer_names == other._layer_names
            and self._target == other._target
            and all(
                len(getattr(self, name)) == len(getattr(other, name))
                and all(map(_same_tensor, getattr(self, name), getattr(other, name)))
                for name in tensors
            )
            and _same_value(_json_compatible(self._metadata), _json_compatible(other._metadata))
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
            f"DependencyGraph(target={self._target!r}, neurons={{{kept}}}, "
            f"edges={sum(len(e) for e in self._edges)}{options})"
        )

    # ------------------------------------------------------------------ files

    def save(self, path: Union[str, Path]) -> None:
        r"""
        Write the graph to a file; the extension picks the format.

        Node ids in files are strings ``"layer:index"``; every format keeps the
        node attributes and the edge weights:

        - ``.graphml`` and ``.json`` (networkx node-link data) also keep, as a
          graph-level attribute ``"dependency_graph"`` holding JSON, the full
          relevance vectors and matrices, the target and the metadata, so
          :meth:`load` restores an equal graph.
        - ``.gexf`` (Gephi) and ``.dot`` (Graphviz, written directly, with one
          rank per layer, lowest at the bottom) keep nodes and edges only.

        Metadata values that JSON cannot hold (e.g. a Captum attribution class
        given as ``relevance``) are saved as their qualified name.

        Args:
            path (str or Path): Where to write; ends in ``.graphml``, ``.gexf``,
                        ``.json`` or ``.dot``.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _SAVABLE:
            raise ValueError(f"cannot save as {suffix!r}; use one of {_SAVABLE}")
        if suffix == ".dot":
            path.write_text(self._to_dot())
            return
        graph = self._build_networkx(_node_label)
        if suffix == ".gexf":
            nx.write_gexf(graph, path)
        elif suffix == ".graphml":
            graph.graph[_STATE_KEY] = json.dumps(self._state())
            nx.write_graphml(graph, path)
        else:
            graph.graph[_STATE_KEY] = self._state()
            path.write_text(json.dumps(nx.node_link_data(graph, edges="edges")))

    def to_html(self, path: Union[str, Path], title: Optional[str] = None) -> Path:
        r"""
        Write the graph as one self-contained, interactive HTML page: layered,
        neurons sized by relevance, edges filtered by a weight slider, hover
        for a neuron's relevance and strongest edges, click for its ancestors
        and descendants. See :func:`graphs_to_html`, which writes several
        graphs (e.g. one per class) into one page.

        Args:
            path (str or Path): Where to write the page (conventionally ``.html``).
            title (str, optional): The page's title. Default: "Dependency graph"
                        and the target, if any.

        Returns:
            *Path* of the page written.

        Examples::

            >>> graph.to_html("class3.html")   # open it in a browser
        """
        from captum_ssa._core.graph_view import graphs_to_html  # it imports this module

        name = "graph" if self._target is None else f"target {self._target}"
        if title is None:
            title = "Dependency graph" + ("" if self._target is None else f" of {name}")
        return graphs_to_html({name: self}, path, title=title)

    @classmethod
    def load(cls, path: Union[str, Path]) -> DependencyGraph:
        r"""
        Read a graph written by :meth:`save` as ``.graphml`` or ``.json``.

        Everything but the modules is restored: the result equals the saved
        graph (``==``), and its layers are known by name (pass names to the
        accessors; :meth:`mask` finds the modules by name in the model).

        Args:
            path (str or Path): A ``.graphml`` or ``.json`` file from :meth:`save`.

        Returns:
            *DependencyGraph* equal to the one saved.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _LOADABLE:
            raise ValueError(
                f"cannot load {suffix!r} files: only {_LOADABLE} carry the relevance "
                "vectors and matrices; save the graph in one of those formats"
            )
        if suffix == ".graphml":
            encoded = nx.read_graphml(path).graph.get(_STATE_KEY)
            state = None if encoded is None else json.loads(encoded)
        else:
            state = json.loads(path.read_text()).get("graph", {}).get(_STATE_KEY)
        if state is None:
            raise ValueError(
                f"{path} has no {_STATE_KEY!r} graph attribute: it was not written "
                "by DependencyGraph.save"
            )
        return cls(
            state["layer_names"],
            None,
            [_decode_tensor(t) for t in state["neurons"]],
            [_decode_tensor(t) for t in state["relevances"]],
            [_decode_tensor(t) for t in state["relevance_matrices"]],
            [_decode_tensor(t) for t in state["edges"]],
            target=state["target"],
            metadata=state["metadata"],
        )

    def _state(self) -> dict[str, Any]:
        """Everything the graph holds but its modules, as JSON-compatible values."""
        return {
            "layer_names": list(self._layer_names),
            "neurons": [_encode_tensor(t) for t in self._neurons],
            "relevances": [_encode_tensor(t) for t in self._relevances],
            "relevance_matrices": [_encode_tensor(t) for t in self._relevance_matrices],
            "edges": [_encode_tensor(t) for t in self._edges],
            "target": self._target,
            "metadata": _json_compatible(self._metadata),
        }

    def _to_dot(self) -> str:
        """Graphviz text, written directly so that no pydot/pygraphviz is needed."""
        lines = ["digraph dependency_graph {", "  rankdir=BT;", "  node [shape=circle];"]
        graph = self._build_networkx(_node_label)
        for depth, name in enumerate(self._layer_names):
            lines.append(f"  subgraph {_dot_quote('layer ' + name)} {{")
            lines.append("    rank=same;")
            for node, data in graph.nodes(data=True):
                if data["depth"] == depth:
                    attributes = (
                        f"layer={_dot_quote(name)}, index={data['index']}, depth={depth}, "
                        f"relevance={data['relevance']!r}, label={_dot_quote(node)}"
                    )
                    lines.append(f"    {_dot_quote(node)} [{attributes}];")
            lines.append("  }")
        for source, sink, weight in graph.edges(data="weight"):
            lines.append(f"  {_dot_quote(source)} -> {_dot_quote(sink)} [weight={weight!r}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ uses

    @contextmanager
    def mask(self, model: Any) -> Iterator[Any]:
        r"""
        Run ``model`` as the graph: every neuron of the hidden layers (all
        listed layers but the top one) that is not in the graph outputs zero.

        A forward hook on each hidden layer zeroes the neurons (units, or
        whole conv channels, along the neuron axis: dim 1, or
        ``metadata["neuron_dim"]``) outside the graph; the biases of
        later layers are untouched. The hooks are removed on leaving the block,
        also when it raises, so the model is left as it was.

        Args:
            model (torch.nn.Module): The model the graph was built on (or one
                        with the same layer names, e.g. a copy).

        Returns:
            A context manager yielding ``model``.

        Examples::

            >>> with graph.mask(net):
            ...     masked_accuracy = (net(x).argmax(1) == y).float().mean()
        """
        modules = self._modules_in(model)
        handles = []
        try:
            for depth, module in enumerate(modules[:-1]):
                handles.append(module.register_forward_hook(self._zeroing_hook(depth)))
            yield model
        finally:
            for handle in handles:
                handle.remove()

    def _modules_in(self, model: Any) -> list[Module]:
        """The graph's layers in ``model``: the same modules, or found by name."""
        owner = model_of(model)
        if owner is None:
            raise TypeError(
                f"mask needs the torch.nn.Module the graph was built on, got {type(model).__name__}"
            )
        members = {id(module) for module in owner.modules()}
        by_name = dict(owner.named_modules())
        modules = []
        for depth, name in enumerate(self._layer_names):
            known = None if self._layers is None else self._layers[depth]
            if known is not None and id(known) in members:
                modules.append(known)
            elif name in by_name:
                modules.append(by_name[name])
            else:
                raise ValueError(
                    f"layer {name!r} of the graph is not in the model {type(owner).__name__}"
                )
        return modules

    def _zeroing_hook(self, depth: int) -> Callable[[Module, Any, Any], Tensor]:
        name, size = self._layer_names[depth], len(self._relevances[depth])
        kept = torch.zeros(size, dtype=torch.bool)
        kept[self._neurons[depth]] = True
        neuron_dim = self._metadata.get("neuron_dim")

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
            return torch.where(
                keep, output, torch.zeros((), dtype=output.dtype, device=output.device)
            )

        return hook

    def draw(self, ax: Optional[Axes] = None) -> Figure:
        r"""
        A layered drawing: one row per layer, the lowest at the bottom.

        Node area grows with the neuron's relevance and edge width with the
        edge weight, both relative to the largest in the same layer (layer
        pair), since relevance scales differ between layers. Nodes are
        labelled with their index (in layers of at most 40 kept neurons) and
        rows with ``name  kept/total``.

        Args:
            ax (matplotlib.axes.Axes, optional): Where to draw. Default: a new
                        figure sized to the graph.

        Returns:
            *matplotlib.figure.Figure* holding the drawing; the nodes are one
            scatter collection with ``gid="dependency-graph-neurons"``.
        """
        import matplotlib.pyplot as plt

        widest = max([len(n) for n in self._neurons] + [1])
        if ax is None:
            figure, ax = plt.subplots(
                figsize=(
                    min(22.0, max(6.0, 0.34 * widest + 2.5)),
                    max(3.0, 1.5 * len(self._layer_names)),
                )
            )
        else:
            figure = ax.figure  # type: ignore[assignment]
        # neuron j of the kept set of a layer sits at x = (j + 1) / (kept + 1), y = depth
        x_positions = [(torch.arange(len(kept)) + 1.0) / (len(kept) + 1) for kept in self._neurons]
        self._draw_edges(ax, x_positions)
        self._draw_neurons(ax, x_positions)
        ax.set_yticks(range(len(self._layer_names)))
        ax.set_yticklabels(
            [
                f"{name}  {len(n)}/{len(r)}"
                for name, n, r in zip(self._layer_names, self._neurons, self._relevances)
            ]
        )
        ax.set_xticks([])
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.5, len(self._layer_names) - 0.5)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        title = "Dependency graph"
        if self._target is not None:
            title += f" of target {self._target}"
        ax.set_title(f"{title}: node size ~ relevance, edge width ~ weight")
        figure.tight_layout()
        return figure

    def _draw_edges(self, ax: Axes, x_positions: list[Tensor]) -> None:
        """One line collection per layer pair; width relative to the pair's largest weight."""
        from matplotlib.collections import LineCollection

        for lower, pairs in enumerate(self._edges):
            if len(pairs) == 0:
                continue
            weights = self._edge_weights(lower).abs()
            lower_x = x_positions[lower][
                torch.searchsorted(self._neurons[lower], pairs[:, 0].contiguous())
            ]
            upper_x = x_positions[lower + 1][
                torch.searchsorted(self._neurons[lower + 1], pairs[:, 1].contiguous())
            ]
            segments = [
                [(float(a), lower), (float(b), lower + 1)]
                for a, b in zip(lower_x.tolist(), upper_x.tolist())
            ]
            widths = 0.3 + 3.2 * weights / weights.max().clamp(min=1e-12)
            # dense (global-mode) layer pairs would turn into a grey block when opaque
            alpha = min(0.6, max(0.08, 40.0 / len(pairs)))
            ax.add_collection(
                LineCollection(
                    segments, linewidths=widths.tolist(), colors="0.35", alpha=alpha, zorder=1
                )
            )

    def _draw_neurons(self, ax: Axes, x_positions: list[Tensor]) -> None:
        """One scatter of all kept neurons; area relative to the layer's most relevant."""
        import matplotlib.pyplot as plt

        xs, ys, sizes, colours = [], [], [], []
        palette = plt.get_cmap("Pastel1")
        for depth, kept in enumerate(self._neurons):
            relevance = self._relevances[depth][kept].abs()
            scaled = relevance / relevance.max().clamp(min=1e-12) if len(kept) else relevance
            xs += x_positions[depth].tolist()
            ys += [depth] * len(kept)
            sizes += (120 + 480 * scaled).tolist()
            colours += [palette(depth % 9)] * len(kept)
            if len(kept) <= 40:  # beyond that the indices would overlap
                for x, index in zip(x_positions[depth].tolist(), kept.tolist()):
                    ax.annotate(
                        str(index),
                        (x, depth),
                        ha="center",
                        va="center",
                        fontsize=8 if len(kept) <= 24 else 6.5,
                        zorder=3,
                    )
        ax.scatter(
            xs,
            ys,
            s=sizes,
            c=colours,
            edgecolors="black",
            linewidths=0.7,
            zorder=2,
            gid="dependency-graph-neurons",
        )


def _as_index_vector(indices: Any) -> Tensor:
    return torch.as_tensor(indices, dtype=torch.long).detach().cpu().reshape(-1)


def _as_index_pairs(pairs: Any) -> Tensor:
    tensor = torch.as_tensor(pairs, dtype=torch.long).detach().cpu()
    if tensor.numel() == 0:
        return tensor.reshape(0, 2)
    if tensor.dim() != 2 or tensor.shape[1] != 2:
        raise ValueError(
            f"edges must be shaped (E, 2) as (lower, upper) pairs, got {tuple(tensor.shape)}"
        )
    return tensor


def _normalise_target(target: Any) -> Target:
    if isinstance(target, (Tensor, np.ndarray)):
        target = target.tolist()
    if isinstance(target, (tuple, list)):
        return [int(t) for t in target]
    return None if target is None else int(target)


def _node_label(layer: str, index: int) -> str:
    return f"{layer}:{index}"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _encode_tensor(tensor: Tensor) -> dict[str, Any]:
    return {
        "dtype": str(tensor.dtype).split(".")[-1],
        "shape": list(tensor.shape),
        "values": tensor.reshape(-1).tolist(),
    }


def _same_tensor(first: Tensor, second: Tensor) -> bool:
    """Same dtype, shape and values, NaN equal to NaN."""
    if first.dtype != second.dtype or first.shape != second.shape:
        return False
    if not (first.is_floating_point() or first.is_complex()):
        return bool(torch.equal(first, second))
    return bool(((first == second) | (first.isnan() & second.isnan())).all())


def _same_value(first: Any, second: Any) -> bool:
    """``==`` for JSON-like values, NaN equal to NaN."""
    if isinstance(first, float) and isinstance(second, float):
        return first == second or (first != first and second != second)
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(
            _same_value(first[key], second[key]) for key in first
        )
    if isinstance(first, list) and isinstance(second, list):
        return len(first) == len(second) and all(map(_same_value, first, second))
    return bool(first == second)


def _decode_tensor(encoded: dict[str, Any]) -> Tensor:
    dtype = getattr(torch, encoded["dtype"])
    return torch.tensor(encoded["values"], dtype=dtype).reshape(encoded["shape"])


def _json_compatible(value: Any) -> Any:
    """``value`` with tuples as lists, tensors as lists and other objects by name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_compatible(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_compatible(item) for item in value]
    if isinstance(value, Tensor):
        return value.tolist()
    named = (
        value
        if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__"))
        else type(value)
    )
    return f"{named.__module__}.{named.__qualname__}"
