"""An interactive view of dependency graphs: one self-contained HTML page.

The page (the template ``view.html`` next to this module) carries its
script, styles and the graphs as one inline JSON blob, so it opens from disk in
any browser and fetches nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

from captum_ssa.graph.comparison import shared_subgraph
from captum_ssa.graph.model import GraphData

_TEMPLATE = "view.html"
_DATA_SLOT = "{{graph_data}}"
# six significant digits: the page shows four, and the file stays half the size of full floats
_DIGITS = 6


def graphs_to_html(
    graphs: Mapping[Any, GraphData],
    path: Union[str, Path],
    title: str = "Dependency graphs",
    shared: bool = True,
) -> Path:
    r"""
    Write one self-contained, interactive HTML page of one or more dependency
    graphs, e.g. the class graphs of :meth:`StepwiseSensitivity.class_graphs`.

    The page needs no network and no server: script, styles and data are
    inline. It shows one graph at a time, chosen in a switcher, in layers (the
    lowest at the bottom, each row labelled ``name  kept/all``). Every kept
    neuron is an SVG circle with ``data-node="<layer>:<index>"``, its area
    growing with its relevance relative to the layer's most relevant kept
    neuron; edges are drawn on a canvas, coloured by the sign of their weight,
    and a slider hides those whose ``|weight|`` is below a fraction of the
    largest in their layer pair. Hovering a neuron shows its layer, index,
    relevance and strongest incoming and outgoing edges; clicking it
    highlights its ancestors and descendants through the edges shown (their
    circles get ``data-highlighted="ancestor"`` or ``"descendant"``, the
    clicked one ``"selected"``). Numbers are stored to six significant digits;
    values that are not finite show as "not finite".

    Args:
        graphs (Mapping[Hashable, DependencyGraph]): The graphs by name (e.g.
                    class label); the switcher lists them in this order as
                    ``str(name)``.
        path (str or Path): Where to write the page (conventionally ``.html``).
        title (str, optional): The page's title. Default: "Dependency graphs"
        shared (bool, optional): With two or more graphs, add a last view of
                    :func:`shared_subgraph`: the nodes and edges common to all
                    of them, with mean relevances and weights. The graphs must
                    then span the same layers. Default: True

    Returns:
        *Path* of the page written.

    Examples::

        >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y, classes=[3, 8])
        >>> graphs_to_html(graphs, "class_graphs.html", title="Digits CNN")
    """
    views = _named_views(graphs)
    if shared and len(views) >= 2:
        try:
            common = shared_subgraph([graph for _, graph in views])
        except ValueError as error:
            raise ValueError(
                f"{error}; or pass shared=False to leave out the shared view"
            ) from None
        views.append((f"shared by all {len(views)}", common))
    data = {
        "title": str(title),
        "views": [_view_data(name, graph) for name, graph in views],
    }
    path = Path(path)
    path.write_text(_page(data), encoding="utf-8")
    return path


def _page(data: Mapping[str, Any]) -> str:
    """The template with ``data`` as its JSON blob.

    ``<``, ``>`` and ``&`` are written as ``\\u`` escapes, so that no name in the
    data (e.g. a layer called ``"</script>"``) can end the script element holding it.
    """
    blob = json.dumps(data, allow_nan=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    template = resources.files("captum_ssa.graph").joinpath(_TEMPLATE).read_text("utf-8")
    return template.replace(_DATA_SLOT, blob)


def _named_views(graphs: Mapping[Any, GraphData]) -> list[tuple[str, GraphData]]:
    """``(str(name), graph)`` pairs, checking types and that the names stay distinct."""
    if not isinstance(graphs, Mapping):
        raise TypeError(
            "graphs must be a mapping from names to DependencyGraph, e.g. {3: graph}, got "
            f"{type(graphs).__name__}"
        )
    if not graphs:
        raise ValueError("graphs is empty: expected at least one DependencyGraph")
    views = []
    for name, graph in graphs.items():
        if not isinstance(graph, GraphData):
            raise TypeError(
                f"graphs[{name!r}] must be a DependencyGraph, got {type(graph).__name__}"
            )
        views.append((str(name), graph))
    labels = [label for label, _ in views]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the graphs' names must differ as text, got {labels}")
    return views


def _view_data(name: str, graph: GraphData) -> dict[str, Any]:
    """One view of the page: layers with kept neurons and relevances, edges per layer pair."""
    names = graph.layer_names
    layers = []
    for layer, size in zip(names, graph.layer_sizes):
        kept = graph.neurons(layer)
        layers.append(
            {
                "name": layer,
                "size": size,
                "neurons": kept.tolist(),
                "relevance": _numbers(graph.relevance(layer)[kept].tolist()),
            }
        )
    edges = []
    for lower, upper in zip(names[:-1], names[1:]):
        pairs = graph.edges(upper, lower)
        edges.append(
            {
                "lower": pairs[:, 0].tolist(),
                "upper": pairs[:, 1].tolist(),
                "weight": _numbers(graph.edge_weights(upper, lower).tolist()),
            }
        )
    shared_by = graph.metadata.get("shared_by")
    if graph.target is None and shared_by is not None:
        note = (
            f"The nodes and edges common to the graphs of {shared_by}; relevances and weights "
            "are their means."
        )
    else:
        note = f"The graph of target {graph.target}." if graph.target is not None else ""
    return {"name": name, "note": note, "layers": layers, "edges": edges}


def _numbers(values: list[float]) -> list[Optional[float]]:
    """Rounded to the digits the page keeps; None (JSON null) where not finite."""
    return [float(f"{value:.{_DIGITS}g}") if math.isfinite(value) else None for value in values]
