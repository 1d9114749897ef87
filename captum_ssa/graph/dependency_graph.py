"""The public dependency graph: :class:`~captum_ssa.graph.model.GraphData` with its
uses as methods.

The methods delegate to the modules that take a graph (files, masking, drawing,
the page), which sit between the data (:mod:`~captum_ssa.graph.model`) and this
class, so none of them needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from captum_ssa.graph import drawing, io, masking, view
from captum_ssa.graph.model import GraphData

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class DependencyGraph(GraphData):
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
        io.save(self, Path(path))

    def to_html(
        self,
        path: Union[str, Path],
        title: Optional[str] = None,
        class_names: Optional[Mapping[Any, str]] = None,
        top_k: Optional[int] = view.TOP_K,
        max_edges: Optional[int] = view.MAX_EDGES,
        examples: Any = None,
        forward_func: Any = None,
        additional_forward_args: Any = None,
    ) -> Path:
        r"""
        Write the graph as one self-contained, interactive HTML page: layered,
        zoomable, neurons sized by relevance, edges filtered by a weight slider
        and a per-neuron top k, a search box, hover for a neuron's relevance,
        strongest edges and (with ``examples``) top-activating examples, click
        for its ancestors and descendants, the graph's provenance, state in the
        URL, and SVG, PNG, JSON and GraphML export. See :func:`graphs_to_html`,
        which writes several graphs (e.g. one per class) into one page.

        Args:
            path (str or Path): Where to write the page (conventionally ``.html``).
            title (str, optional): The page's title. Default: "Dependency graph"
                        and the target, if any.
            class_names (Mapping[Hashable, str], optional): Names of classes:
                        the target's name joins the view's name, and the top
                        layer's neuron ``i`` is labelled ``class_names[i]``.
                        Default: None
            top_k (int, optional): The strongest in-edges per neuron shown
                        when the page opens; None or 0 shows all. Default: 8
            max_edges (int, optional): The most edges the page keeps (the
                        strongest per neuron; a :class:`CaptumSSAWarning`
                        says how many were left out). None keeps all.
                        Default: 100000
            examples (Any, optional): Inputs whose top-activating examples
                        the page shows per kept neuron below the top layer.
                        Default: None
            forward_func (Callable, optional): The model, for ``examples``.
                        Default: None
            additional_forward_args (Any, optional): Passed to the model
                        after ``examples``. Default: None

        Returns:
            *Path* of the page written.

        Examples::

            >>> graph.to_html("class3.html", class_names={3: "three"})   # open it in a browser
        """
        name = "graph" if self._target is None else f"target {self._target}"
        if title is None:
            title = "Dependency graph" + ("" if self._target is None else f" of {name}")
        # anything but a mapping goes on as it is, for graphs_to_html's error
        names = dict(class_names) if isinstance(class_names, Mapping) else class_names
        if isinstance(names, dict) and isinstance(self._target, int) and self._target in names:
            names[name] = names[self._target]  # the view is named by its target's class
        return view.graphs_to_html(
            {name: self},
            path,
            title=title,
            class_names=names,
            top_k=top_k,
            max_edges=max_edges,
            examples=examples,
            forward_func=forward_func,
            additional_forward_args=additional_forward_args,
        )

    @classmethod
    def load(cls, path: Union[str, Path], model: Optional[Any] = None) -> DependencyGraph:
        r"""
        Read a graph written by :meth:`save` as ``.graphml`` or ``.json``.

        Everything but the modules is restored: the result equals the saved
        graph (``==``). A file names its layers only, so without ``model``
        they are known by name (pass names to the accessors; :meth:`mask`
        finds the modules by name in the model it is given). With ``model``
        the layers are found by name in it, once, so the accessors also take
        the modules (``graph.relevance(model.fc1)``), and the model is kept
        as ``forward_func``, as on the graph StepwiseSensitivity returned.

        Args:
            path (str or Path): A ``.graphml`` or ``.json`` file from :meth:`save`.
            model (torch.nn.Module, optional): The model the graph was built
                        on (or one with the same layer names; a wrapped or
                        compiled model is read through the module inside).
                        Default: None

        Returns:
            *DependencyGraph* equal to the one saved.

        Examples::

            >>> graph.save("class3.graphml")
            >>> loaded = DependencyGraph.load("class3.graphml", model=net)
            >>> loaded.relevance(net.fc1)   # as graph.relevance(net.fc1)
        """
        state = io.read_state(Path(path))
        loaded = cls(layers=None, **state)
        if model is None:
            return loaded
        return cls(layers=masking.graph_modules(loaded, model), forward_func=model, **state)

    # ------------------------------------------------------------------ uses

    def mask(self, model: Any) -> AbstractContextManager[Any]:
        r"""
        Run ``model`` as the graph: every neuron of the hidden layers (all
        listed layers but the top one) that is not in the graph outputs zero.

        A forward hook on each hidden layer zeroes the neurons (units, or
        whole conv channels, along the neuron axis: dim 1, or
        ``metadata["neuron_dim"]``) outside the graph; the biases of
        later layers are untouched. The hooks are removed on leaving the block,
        also when it raises, so the model is left as it was. A
        compiled model (``torch.compile``) runs as written inside the block (its compiled
        code would call no hook); on torch before 2.6, which cannot do that, it
        is an error that says to pass the original module.

        Args:
            model (torch.nn.Module): The model the graph was built on (or one
                        with the same layer names, e.g. a copy).

        Returns:
            A context manager yielding ``model``.

        Examples::

            >>> with graph.mask(net):
            ...     masked_accuracy = (net(x).argmax(1) == y).float().mean()
        """
        return masking.mask(self, model)

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
        return drawing.draw(self, ax)
