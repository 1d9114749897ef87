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

import torch

from captum_ssa._utils.warn import warn
from captum_ssa._version import __version__
from captum_ssa.graph._parts import json_compatible
from captum_ssa.graph.comparison import shared_subgraph
from captum_ssa.graph.model import GraphData

_TEMPLATE = "view.html"
_DATA_SLOT = "{{graph_data}}"
# six significant digits: the page shows four, and the file stays half the size of full floats
_DIGITS = 6
# the strongest in-edges per neuron that the page shows at first: 8 keep a 128-unit layer
# pair at about a thousand edges, where the full pair is 16k lines on top of each other
TOP_K = 8
# the edges one view keeps at most; a page beyond that takes seconds to open and to redraw in a
# browser without a GPU (bench_graph_view.py), and 500k edges were not painted after minutes
MAX_EDGES = 100_000
# the key of the shared subgraph's view: no key of the user's
_SHARED = object()


def graphs_to_html(
    graphs: Mapping[Any, GraphData],
    path: Union[str, Path],
    title: str = "Dependency graphs",
    shared: bool = True,
    class_names: Optional[Mapping[Any, str]] = None,
    top_k: Optional[int] = TOP_K,
    max_edges: Optional[int] = MAX_EDGES,
    examples: Any = None,
    forward_func: Any = None,
    additional_forward_args: Any = None,
) -> Path:
    r"""
    Write one self-contained, interactive HTML page of one or more dependency
    graphs, e.g. the class graphs of :meth:`StepwiseSensitivity.class_graphs`.

    The page needs no network and no server: script, styles and data are
    inline. It shows one graph at a time, chosen in a switcher, in layers (the
    lowest at the bottom, each row labelled ``name  kept/all``). Every kept
    neuron is an SVG circle with ``data-node="<layer>:<index>"``, its area
    growing with its relevance relative to the layer's most relevant kept
    neuron, coloured by layer; edges are drawn on a canvas, coloured by sign,
    their width and opacity growing with ``|weight|``: the Step II relevance
    between the two neurons, aggregated over the examples (not a network
    weight).

    On the page:

    - the wheel zooms about the pointer, dragging pans, "Reset view" (or the
      key ``0``) fits the graph again; layer names and neuron indices keep their
      size at any zoom, indices showing once neurons are far enough apart;
    - a slider hides edges whose ``|weight|`` is below a fraction of the largest
      in their layer pair, and "top k" keeps only the ``k`` strongest in-edges
      of every neuron (0: all); both apply to the drawing, the hover, the
      highlights and the exports;
    - the search box finds a neuron by ``layer:index`` or by label (class
      names label the top layer's neurons), or a graph by name, and selects it;
    - hovering a neuron shows its relevance, its strongest incoming and
      outgoing edges and, with ``examples``, its top-activating examples;
      clicking it highlights its ancestors and descendants through the edges
      shown (their circles get ``data-highlighted="ancestor"`` or
      ``"descendant"``, the clicked one ``"selected"``) and shows the same in
      the side panel;
    - the side panel gives the provenance of the graph shown (its
      ``metadata``: method, model, relevance, aggregation, mode, percentile or
      branching, number of examples; its layers; the package version) and a
      legend of every colour;
    - the graph, the selection, the thresholds and the zoom live in the URL's
      ``#`` part, so a link reopens the same view;
    - the view exports as SVG or PNG, and the selected subgraph (selection,
      ancestors and descendants through the edges shown; everything shown
      without a selection) as node-link JSON or GraphML.

    Numbers are stored to six significant digits; values that are not finite
    show as "not finite".

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
        class_names (Mapping[Hashable, str], optional): Names of classes: a
                    graph whose name (key of ``graphs``) is a key here is listed
                    as ``"<class name> (<name>)"``, and the top layer's neuron
                    ``i`` (the model's output ``i``: SSA's targets) is labelled
                    ``class_names[i]``. Default: None
        top_k (int, optional): The strongest in-edges per neuron shown when
                    the page opens (the page can change it); None or 0 shows
                    all. Default: 8
        max_edges (int, optional): The most edges a view keeps in the file. A
                    larger graph keeps the strongest in-edges of every neuron,
                    as many per neuron as fit, and the page says how many were
                    left out (a :class:`CaptumSSAWarning` too). None keeps all.
                    Default: 100000
        examples (Any, optional): Inputs whose top-activating examples the page
                    shows per kept neuron of every layer but the top one
                    (thumbnails for images, text for tokens, bars for tabular
                    rows; for images also the neuron's switched-weights
                    pattern), computed by
                    :func:`~captum_ssa.graph.neuron_examples`
                    for every view. Default: None
        forward_func (Callable, optional): The model, for ``examples``; needed
                    where the graphs do not hold their modules' model.
                    Default: None
        additional_forward_args (Any, optional): Passed to the model after
                    ``examples``. Default: None

    Returns:
        *Path* of the page written.

    Examples::

        >>> graphs = StepwiseSensitivity(net, layers).class_graphs(x, y, classes=[3, 8])
        >>> graphs_to_html(graphs, "class_graphs.html", title="Digits CNN",
        ...                class_names={3: "three", 8: "eight"})
        >>> graphs_to_html(graphs, "with_examples.html", examples=x_test, forward_func=net)
    """
    views = _views(graphs, shared)
    data = _page_data(views, title, class_names=class_names, top_k=top_k, max_edges=max_edges)
    if examples is not None:
        # the examples module pulls in the model-running code only where a page asks for it
        from captum_ssa.graph.neuron_examples import neuron_examples_of_graphs

        shown = neuron_examples_of_graphs(
            [graph for _, graph in views], examples, forward_func, additional_forward_args
        )
        for view, neurons in zip(data["views"], shown):
            view["neuron_examples"] = neurons
    path = Path(path)
    path.write_text(_page(data), encoding="utf-8")
    return path


def _views(graphs: Mapping[Any, GraphData], shared: bool) -> list[tuple[Any, GraphData]]:
    """``(key, graph)`` of every view in order; the shared view's key is ``_SHARED``."""
    views: list[tuple[Any, GraphData]] = list(_named_views(graphs))
    if shared and len(views) >= 2:
        try:
            common = shared_subgraph([graph for _, graph in views])
        except ValueError as error:
            raise ValueError(
                f"{error}; or pass shared=False to leave out the shared view"
            ) from None
        views.append((_SHARED, common))
    return views


def _page_data(
    views: list[tuple[Any, GraphData]],
    title: str,
    class_names: Optional[Mapping[Any, str]] = None,
    top_k: Optional[int] = TOP_K,
    max_edges: Optional[int] = MAX_EDGES,
) -> dict[str, Any]:
    """The page's JSON blob of ``views`` (from :func:`_views`), without per-neuron examples."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
    if max_edges is not None and (
        isinstance(max_edges, bool) or not isinstance(max_edges, int) or max_edges < 1
    ):
        raise ValueError(f"max_edges must be a positive int or None, got {max_edges!r}")
    if class_names is not None and not isinstance(class_names, Mapping):
        raise TypeError(
            "class_names must be a mapping from classes to names, e.g. {3: 'three'}, got "
            f"{type(class_names).__name__}"
        )
    names = dict(class_names or {})
    written = []
    for key, graph in views:
        name = f"shared by all {len(views) - 1}" if key is _SHARED else str(key)
        written.append(_view_data(name, graph, names, max_edges))
        written[-1]["label"] = _class_label(key, name, names)
    return {"title": str(title), "version": __version__, "top_k": top_k or 0, "views": written}


def _class_label(key: Any, name: str, class_names: Mapping[Any, str]) -> str:
    """``"<class name> (<name>)"`` where ``key`` has a class name, else ``name``."""
    try:
        known = key is not _SHARED and key in class_names
    except TypeError:  # an unhashable key (e.g. a list of targets) names no class
        known = False
    return f"{class_names[key]} ({name})" if known else name


def _page(data: Mapping[str, Any]) -> str:
    """The template with ``data`` as its JSON blob.

    ``<``, ``>`` and ``&`` are written as ``\\u`` escapes, so that no name in the
    data (e.g. a layer called ``"</script>"``) can end the script element holding it.
    """
    blob = json.dumps(data, allow_nan=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    template = resources.files("captum_ssa.graph").joinpath(_TEMPLATE).read_text("utf-8")
    return template.replace(_DATA_SLOT, blob)


def _named_views(graphs: Mapping[Any, GraphData]) -> list[tuple[Any, GraphData]]:
    """``(name, graph)`` pairs, checking types and that the names stay distinct as text."""
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
        views.append((name, graph))
    labels = [str(name) for name, _ in views]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the graphs' names must differ as text, got {labels}")
    return views


def _view_data(
    name: str, graph: GraphData, class_names: Mapping[Any, str], max_edges: Optional[int]
) -> dict[str, Any]:
    """One view of the page: layers with kept neurons and relevances, edges per layer pair
    (the strongest per neuron, where there are more than ``max_edges``), metadata."""
    names = graph.layer_names
    layers = []
    for depth, (layer, size) in enumerate(zip(names, graph.layer_sizes)):
        kept = graph.neurons(layer)
        layers.append(
            {
                "name": layer,
                "size": size,
                "neurons": kept.tolist(),
                "relevance": _numbers(graph.relevance(layer)[kept].tolist()),
            }
        )
        if depth == len(names) - 1 and class_names:
            labels = {str(i): class_names[i] for i in kept.tolist() if i in class_names}
            layers[-1]["labels"] = {key: str(label) for key, label in labels.items()}
    pairs = [graph.edges(upper, lower) for lower, upper in zip(names[:-1], names[1:])]
    weights = [graph.edge_weights(upper, lower) for lower, upper in zip(names[:-1], names[1:])]
    total = sum(len(pair) for pair in pairs)
    per_neuron = None
    if max_edges is not None and total > max_edges:
        per_neuron = _edges_per_neuron(pairs, max_edges)
        keep = [_strongest_in_edges(p, w, per_neuron) for p, w in zip(pairs, weights)]
        pairs = [pair[k] for pair, k in zip(pairs, keep)]
        weights = [weight[k] for weight, k in zip(weights, keep)]
        left_out = total - sum(len(pair) for pair in pairs)
        warn(
            f"the graph {name!r} has {total} edges, more than max_edges={max_edges}: the page "
            f"keeps the {per_neuron} strongest in-edges of every neuron and leaves out "
            f"{left_out} edges (it says so); pass a larger max_edges, or None, to keep them"
        )
    edges = [
        {
            "lower": pair[:, 0].tolist(),
            "upper": pair[:, 1].tolist(),
            "weight": _numbers(weight.tolist()),
        }
        for pair, weight in zip(pairs, weights)
    ]
    shared_by = graph.metadata.get("shared_by")
    if graph.target is None and shared_by is not None:
        note = (
            f"The nodes and edges common to the graphs of {shared_by}; relevances and weights "
            "are their means."
        )
    else:
        note = f"The graph of target {graph.target}." if graph.target is not None else ""
    view: dict[str, Any] = {
        "name": name,
        "note": note,
        "metadata": _finite(json_compatible(graph.metadata)),
        "layers": layers,
        "edges": edges,
    }
    if per_neuron is not None:
        view["left_out"] = {
            "edges": left_out,
            "of": total,
            "per_neuron": per_neuron,
            "max_edges": max_edges,
        }
    return view


def _edges_per_neuron(pairs: list[torch.Tensor], max_edges: int) -> int:
    """The largest ``k`` (at least 1) such that the ``k`` strongest in-edges of every upper
    neuron are at most ``max_edges`` edges in all."""
    degrees = torch.cat([torch.bincount(pair[:, 1]) for pair in pairs if len(pair)])
    low, high = 1, int(degrees.max())
    while low < high:  # the count grows with k: the largest k within max_edges
        middle = (low + high + 1) // 2
        if int(degrees.clamp(max=middle).sum()) <= max_edges:
            low = middle
        else:
            high = middle - 1
    return low


def _strongest_in_edges(pair: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """The rows of ``pair`` that are among the ``k`` largest ``|weight|`` into their upper
    neuron (ties in row order; not finite counts as largest)."""
    count = len(pair)
    if count == 0:
        return torch.zeros(0, dtype=torch.bool)
    magnitude = weight.abs().double().nan_to_num(nan=math.inf)
    # each row's place by decreasing |weight| (ties in row order), then the rows by upper
    # neuron and that place: one sort of distinct keys
    place = torch.empty(count, dtype=torch.long)
    place[torch.argsort(-magnitude, stable=True)] = torch.arange(count)
    order = torch.argsort(pair[:, 1] * count + place)
    upper = pair[order, 1]
    starts = torch.ones_like(upper, dtype=torch.bool)
    starts[1:] = upper[1:] != upper[:-1]
    group_start = torch.cummax(torch.where(starts, torch.arange(count), 0), 0).values
    keep = torch.zeros(count, dtype=torch.bool)
    keep[order[torch.arange(count) - group_start < k]] = True
    return keep


def _finite(value: Any) -> Any:
    """``value`` (JSON-compatible) with floats that are not finite as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _numbers(values: list[float]) -> list[Optional[float]]:
    """Rounded to the digits the page keeps; None (JSON null) where not finite."""
    return [float(f"{value:.{_DIGITS}g}") if math.isfinite(value) else None for value in values]
