"""A layered matplotlib drawing of a dependency graph.

:meth:`DependencyGraph.draw <captum_ssa.graph.DependencyGraph.draw>` documents
it. matplotlib is imported on the first drawing only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from captum_ssa.graph.model import GraphData


def draw(graph: GraphData, ax: Optional[Axes] = None) -> Figure:
    """One row per layer, the lowest at the bottom; see ``DependencyGraph.draw``."""
    import matplotlib.pyplot as plt

    names = graph.layer_names
    neurons = [graph.neurons(name) for name in names]
    widest = max([len(n) for n in neurons] + [1])
    if ax is None:
        figure, ax = plt.subplots(
            figsize=(min(22.0, max(6.0, 0.34 * widest + 2.5)), max(3.0, 1.5 * len(names)))
        )
    else:
        figure = ax.figure  # type: ignore[assignment]
    # neuron j of the kept set of a layer sits at x = (j + 1) / (kept + 1), y = depth
    x_positions = [(torch.arange(len(kept)) + 1.0) / (len(kept) + 1) for kept in neurons]
    _draw_edges(graph, ax, neurons, x_positions)
    _draw_neurons(graph, ax, neurons, x_positions)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(
        [f"{name}  {len(n)}/{size}" for name, n, size in zip(names, neurons, graph.layer_sizes)]
    )
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, len(names) - 0.5)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    title = "Dependency graph"
    if graph.target is not None:
        title += f" of target {graph.target}"
    ax.set_title(f"{title}: node size ~ relevance, edge width ~ weight")
    figure.tight_layout()
    return figure


def _draw_edges(
    graph: GraphData, ax: Axes, neurons: list[Tensor], x_positions: list[Tensor]
) -> None:
    """One line collection per layer pair; width relative to the pair's largest weight."""
    from matplotlib.collections import LineCollection

    names = graph.layer_names
    for lower, (lower_name, upper_name) in enumerate(zip(names[:-1], names[1:])):
        pairs = graph.edges(upper_name, lower_name)
        if len(pairs) == 0:
            continue
        weights = graph.edge_weights(upper_name, lower_name).abs()
        lower_x = x_positions[lower][torch.searchsorted(neurons[lower], pairs[:, 0].contiguous())]
        upper_x = x_positions[lower + 1][
            torch.searchsorted(neurons[lower + 1], pairs[:, 1].contiguous())
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


def _draw_neurons(
    graph: GraphData, ax: Axes, neurons: list[Tensor], x_positions: list[Tensor]
) -> None:
    """One scatter of all kept neurons; area relative to the layer's most relevant."""
    import matplotlib.pyplot as plt

    xs, ys, sizes, colours = [], [], [], []
    palette = plt.get_cmap("Pastel1")
    for depth, (name, kept) in enumerate(zip(graph.layer_names, neurons)):
        relevance = graph.relevance(name)[kept].abs()
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
