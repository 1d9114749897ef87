"""Dependency graphs: the data model and its accessors (:mod:`~captum_ssa.graph.model`),
files (:mod:`~captum_ssa.graph.io`), masking a model (:mod:`~captum_ssa.graph.masking`),
drawing (:mod:`~captum_ssa.graph.drawing`), comparing class graphs
(:mod:`~captum_ssa.graph.comparison`) and the interactive page
(:mod:`~captum_ssa.graph.view`)."""

from captum_ssa.graph.comparison import (
    BagOfNodes,
    bag_of_nodes,
    cluster_classes,
    jaccard_similarity,
    plot_clustermap,
    shared_subgraph,
)
from captum_ssa.graph.model import DependencyGraph
from captum_ssa.graph.view import graphs_to_html

__all__ = [
    "BagOfNodes",
    "DependencyGraph",
    "bag_of_nodes",
    "cluster_classes",
    "graphs_to_html",
    "jaccard_similarity",
    "plot_clustermap",
    "shared_subgraph",
]
