"""Dependency graphs, in layers: the data model and its queries at the bottom
(:mod:`~captum_ssa.graph.model`); above it files (:mod:`~captum_ssa.graph.io`),
masking a model (:mod:`~captum_ssa.graph.masking`), drawing
(:mod:`~captum_ssa.graph.drawing`), comparing class graphs
(:mod:`~captum_ssa.graph.comparison`), the interactive page
(:mod:`~captum_ssa.graph.view`) and what its neurons respond to
(:mod:`~captum_ssa.graph.neuron_examples`); above those the public
:class:`DependencyGraph` with them as methods
(:mod:`~captum_ssa.graph.dependency_graph`); and on top the graph as a classifier
(:mod:`~captum_ssa.graph.evaluation`, its result records and per-class rates in
:mod:`~captum_ssa.graph.rates`, its ablations in :mod:`~captum_ssa.graph.ablation`
and the reading of its data in :mod:`~captum_ssa.graph.labelled_data`)."""

from captum_ssa.graph.comparison import (
    BagOfNodes,
    bag_of_nodes,
    cluster_classes,
    jaccard_similarity,
    plot_clustermap,
    shared_subgraph,
)
from captum_ssa.graph.dependency_graph import DependencyGraph
from captum_ssa.graph.evaluation import (
    ClassRates,
    EnsembleEvaluation,
    GraphEvaluation,
    ablation_importance,
    class_rates,
    ensemble_predict,
    evaluate_ensemble,
    evaluate_graph,
    spearman_agreement,
)
from captum_ssa.graph.neuron_examples import neuron_examples
from captum_ssa.graph.view import graphs_to_html

__all__ = [
    "BagOfNodes",
    "ClassRates",
    "DependencyGraph",
    "EnsembleEvaluation",
    "GraphEvaluation",
    "ablation_importance",
    "bag_of_nodes",
    "class_rates",
    "cluster_classes",
    "ensemble_predict",
    "evaluate_ensemble",
    "evaluate_graph",
    "graphs_to_html",
    "jaccard_similarity",
    "neuron_examples",
    "plot_clustermap",
    "shared_subgraph",
    "spearman_agreement",
]
