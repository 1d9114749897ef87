"""Moved to :mod:`captum_ssa.graph`; kept until the importers move."""

from captum_ssa.graph.comparison import (
    BagOfNodes,
    bag_of_nodes,
    cluster_classes,
    jaccard_similarity,
    plot_clustermap,
    shared_subgraph,
)

__all__ = [
    "BagOfNodes",
    "bag_of_nodes",
    "cluster_classes",
    "jaccard_similarity",
    "plot_clustermap",
    "shared_subgraph",
]
