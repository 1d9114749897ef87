"""Comparing class-specific dependency graphs (step-wise sensitivity analysis).

Classes whose graphs share many neurons share internal features; the
neurons and links common to several classes are candidate partially
distributed representations. The paper turns each class graph into a
bag-of-nodes vector, clusters the classes hierarchically (Ward, cosine
geometry) and shows the result as a clustermap.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, TypeVar

import numpy as np
import torch
from torch import Tensor

from captum_ssa.graph.model import GraphData

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Graph = TypeVar("Graph", bound=GraphData)


class BagOfNodes(NamedTuple):
    """One presence vector per class graph over the union of their nodes.

    ``vectors[c, j]`` is 1.0 when node ``nodes[j]`` (a ``(layer name,
    index)`` pair) is in the graph of ``classes[c]``, else 0.0. Nodes are
    ordered by layer (lowest first), then index.
    """

    classes: list[Hashable]
    nodes: list[tuple[str, int]]
    vectors: Tensor


def bag_of_nodes(
    class_graphs: Mapping[Any, GraphData],
    layers: Optional[Sequence[str]] = None,
) -> BagOfNodes:
    r"""
    Bag-of-nodes vectors of class graphs: one 0/1 vector per class over the
    union of the nodes of all the graphs.

    Args:
        class_graphs (Mapping[Hashable, DependencyGraph]): One graph per
                    class, e.g. from ``StepwiseSensitivity.class_graphs``; all
                    over the same layers.
        layers (Sequence[str], optional): Count only the nodes of these
                    layers (e.g. all but the top one, whose nodes are the
                    classes themselves). Default: all layers.

    Returns:
        *BagOfNodes* ``(classes, nodes, vectors)``, ``vectors`` shaped
        ``(classes, nodes)``.

    Examples::

        >>> bag = bag_of_nodes(graphs, layers=["conv2", "fc1"])
        >>> jaccard_similarity(bag)
    """
    layer_names = _common_layer_names(list(class_graphs.values()))
    chosen = layer_names if layers is None else list(layers)
    unknown = sorted(set(chosen) - set(layer_names))
    if unknown:
        raise ValueError(
            f"layers must name layers of the graphs: {unknown} are not in the graphs, which "
            f"have {layer_names}"
        )
    nodes = [
        (name, index)
        for name in layer_names
        if name in chosen
        for index in sorted(
            set().union(*(graph.neurons(name).tolist() for graph in class_graphs.values()))
        )
    ]
    column = {node: position for position, node in enumerate(nodes)}
    vectors = torch.zeros(len(class_graphs), len(nodes))
    for row, graph in enumerate(class_graphs.values()):
        for name in chosen:
            for index in graph.neurons(name).tolist():
                vectors[row, column[(name, index)]] = 1.0
    return BagOfNodes(list(class_graphs), nodes, vectors)


def jaccard_similarity(bag: BagOfNodes) -> Tensor:
    r"""
    :math:`|A \cap B| / |A \cup B|` between the node sets of every pair of
    class graphs (1.0 for two empty graphs).

    Args:
        bag (BagOfNodes): From :func:`bag_of_nodes`.

    Returns:
        *Tensor* ``(classes, classes)``, symmetric, ones on the diagonal.
    """
    present = bag.vectors > 0
    shared = (present[:, None, :] & present[None, :, :]).sum(-1)
    either = (present[:, None, :] | present[None, :, :]).sum(-1)
    return torch.where(either > 0, shared / either.clamp(min=1), torch.ones(()))


def cluster_classes(bag: BagOfNodes) -> np.ndarray:
    r"""
    Hierarchical clustering of the classes: Ward's method on the
    L2-normalised bag-of-nodes vectors, whose Euclidean geometry is the cosine
    geometry the paper uses (:math:`\lVert u - v \rVert^2 = 2 - 2 \cos(u, v)`
    for unit vectors). An empty graph's vector stays zero.

    Args:
        bag (BagOfNodes): From :func:`bag_of_nodes`, at least two classes.

    Returns:
        *numpy.ndarray* the SciPy linkage matrix ``(classes - 1, 4)``; rows are
        merges of ``bag.classes`` positions. Use
        ``scipy.cluster.hierarchy.fcluster(result, k, "maxclust")`` for ``k``
        flat clusters.
    """
    if len(bag.classes) < 2:
        raise ValueError(
            f"bag must hold the graphs of at least two classes to cluster, got {len(bag.classes)}"
        )
    vectors = bag.vectors.double()
    norms = vectors.norm(dim=1, keepdim=True)
    normalised = torch.where(norms > 0, vectors / norms.clamp(min=1e-300), vectors)
    from scipy.cluster.hierarchy import linkage  # imported where used, not with the package

    return linkage(normalised.numpy(), method="ward")


def plot_clustermap(bag: BagOfNodes) -> Figure:
    r"""
    The paper's clustermap (its Figure 3): the bag-of-nodes matrix, one row
    per class ordered by the clustering, red where a neuron is in the class's
    graph and blue where not, columns grouped by layer, and the dendrogram of
    :func:`cluster_classes` on the left.

    Args:
        bag (BagOfNodes): From :func:`bag_of_nodes`, at least two classes.

    Returns:
        *matplotlib.figure.Figure* with the dendrogram and the heatmap.
    """
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    rows = len(bag.classes)
    figure, (tree_axes, map_axes) = plt.subplots(
        1,
        2,
        figsize=(11, max(3.0, 0.45 * rows + 1.5)),
        gridspec_kw={"width_ratios": [1, 5], "wspace": 0.02},
    )
    # SciPy's dendrogram puts leaf j (bottom to top) at y = 10 j + 5
    tree = dendrogram(
        cluster_classes(bag),
        orientation="left",
        no_labels=True,
        ax=tree_axes,
        color_threshold=0,
        above_threshold_color="0.3",
    )
    tree_axes.set_xticks([])
    tree_axes.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        tree_axes.spines[side].set_visible(False)
    ordered = bag.vectors[tree["leaves"]].numpy()
    columns = max(1, len(bag.nodes))
    map_axes.imshow(
        ordered if len(bag.nodes) else np.zeros((rows, 1)),
        cmap="coolwarm",
        vmin=0,
        vmax=1,
        aspect="auto",
        origin="lower",
        extent=(0, columns, 0, 10 * rows),
        interpolation="nearest",
    )
    centres, names = [], []
    for name in dict.fromkeys(layer for layer, _ in bag.nodes):
        positions = [j for j, (layer, _) in enumerate(bag.nodes) if layer == name]
        centres.append((positions[0] + positions[-1] + 1) / 2)
        names.append(name)
        if positions[0] > 0:
            map_axes.axvline(positions[0], color="black", linewidth=1.2)
    map_axes.set_xticks(centres)
    map_axes.set_xticklabels(names)
    map_axes.set_xlabel("neurons, grouped by layer (red: in the class's graph)")
    map_axes.yaxis.tick_right()
    map_axes.set_yticks([10 * row + 5 for row in range(rows)])
    map_axes.set_yticklabels([str(bag.classes[leaf]) for leaf in tree["leaves"]])
    map_axes.set_ylabel("class")
    map_axes.yaxis.set_label_position("right")
    for axes in (tree_axes, map_axes):
        axes.set_ylim(0, 10 * rows)
    map_axes.set_title("Bag-of-nodes of the class dependency graphs, Ward clustering")
    figure.subplots_adjust(left=0.04, right=0.94, bottom=0.18, top=0.9)
    return figure


def shared_subgraph(graphs: Sequence[Graph]) -> Graph:
    r"""
    The nodes and edges common to all the given graphs: candidate partially
    distributed representations shared by their classes.

    Returned as a :class:`DependencyGraph` (the class of the first graph given)
    over the same layers, so it can be drawn, saved, used as a mask or turned
    into networkx: its neurons are the
    intersection of the graphs' kept sets, its edges the intersection of their
    edge sets, and its relevance vectors and matrices (hence node relevances
    and edge weights) the mean over the graphs. It has no target; its
    ``metadata["shared_by"]`` lists the graphs' targets. Where all the graphs
    were built from one model (``forward_func``), so is the shared graph.

    Args:
        graphs (Sequence[DependencyGraph]): At least one graph, all over the
                    same layers (e.g. class graphs of one model).

    Returns:
        *DependencyGraph* of the shared nodes and edges.

    Examples::

        >>> common = shared_subgraph([graphs[3], graphs[8]])
        >>> common.neurons("conv2")      # channels both classes rely on
    """
    graphs = list(graphs)
    layer_names = _common_layer_names(graphs)
    depth = len(layer_names)
    neurons = []
    for layer in range(depth):
        kept = set(graphs[0].neurons(layer_names[layer]).tolist())
        for graph in graphs[1:]:
            kept &= set(graph.neurons(layer_names[layer]).tolist())
        neurons.append(torch.tensor(sorted(kept), dtype=torch.long))
    relevances = [
        torch.stack([graph.relevance(name) for graph in graphs]).mean(0) for name in layer_names
    ]
    matrices, edges = [], []
    for lower in range(depth - 1):
        upper_name, lower_name = layer_names[lower + 1], layer_names[lower]
        rows = [
            graph.relevance_matrix(upper_name, lower_name)[
                torch.searchsorted(graph.neurons(upper_name), neurons[lower + 1])
            ]
            for graph in graphs
        ]
        matrices.append(torch.stack(rows).mean(0))
        common = set(map(tuple, graphs[0].edges(upper_name, lower_name).tolist()))
        for graph in graphs[1:]:
            common &= set(map(tuple, graph.edges(upper_name, lower_name).tolist()))
        edges.append(torch.tensor(sorted(common), dtype=torch.long).reshape(-1, 2))
    modules = graphs[0].layers
    # the model travels with the shared graph where every graph was built from the same one
    forward_funcs = {id(graph.forward_func) for graph in graphs}
    return type(graphs[0])(
        layer_names,
        modules,
        neurons,
        relevances,
        matrices,
        edges,
        target=None,
        metadata={"shared_by": [graph.target for graph in graphs]},
        forward_func=graphs[0].forward_func if len(forward_funcs) == 1 else None,
    )


def _common_layer_names(graphs: Sequence[GraphData]) -> list[str]:
    if not graphs:
        raise ValueError("no graphs given: expected at least one DependencyGraph")
    names = graphs[0].layer_names
    for graph in graphs[1:]:
        if graph.layer_names != names:
            raise ValueError(
                f"the graphs span different layers: {names} and {graph.layer_names}; "
                "compare graphs built over the same layers"
            )
    return names
