"""captum-ssa: internal interpretability methods for Captum.

Which neurons, in which layers, linked how, carry a decision:

- :class:`SwitchedLinearProjection`: a ReLU network's neuron as one exact
  linear projection of the input, with a per-feature decomposition.
- :class:`InactiveStateSensitivity` (Insens): what keeps a layer's inactive
  neurons off.
- :class:`StepwiseSensitivity` (SSA): the dependency graph of the relevant
  neurons of every layer, a :class:`DependencyGraph`, with its uses
  (:func:`evaluate_graph`, :func:`ablation_importance`, class comparison).
- :class:`LayeredInfluence`: the most influential hidden layer's top units,
  projected back to the input with DeconvNet.
"""

from captum_ssa._core.inactive_state_sensitivity import InactiveStateSensitivity
from captum_ssa._core.layered_influence import LayeredInfluence
from captum_ssa._core.stepwise_sensitivity import StepwiseSensitivity
from captum_ssa._core.switched_linear_projection import (
    SwitchedLinearProjection,
    SwitchedProjection,
)
from captum_ssa._utils.hooks import ReusedLayerError
from captum_ssa._utils.memory_budget import get_memory_budget, memory_budget, set_memory_budget
from captum_ssa._utils.warn import CaptumSSAWarning
from captum_ssa._version import __version__ as __version__
from captum_ssa.graph import (
    BagOfNodes,
    DependencyGraph,
    bag_of_nodes,
    cluster_classes,
    graphs_to_html,
    jaccard_similarity,
    plot_clustermap,
    shared_subgraph,
)
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
from captum_ssa.relevance import CaptumRelevance, LayerPair

__all__ = [
    "BagOfNodes",
    "CaptumRelevance",
    "CaptumSSAWarning",
    "ClassRates",
    "DependencyGraph",
    "EnsembleEvaluation",
    "GraphEvaluation",
    "InactiveStateSensitivity",
    "LayerPair",
    "LayeredInfluence",
    "ReusedLayerError",
    "StepwiseSensitivity",
    "SwitchedLinearProjection",
    "SwitchedProjection",
    "ablation_importance",
    "bag_of_nodes",
    "class_rates",
    "cluster_classes",
    "ensemble_predict",
    "evaluate_ensemble",
    "evaluate_graph",
    "get_memory_budget",
    "graphs_to_html",
    "jaccard_similarity",
    "memory_budget",
    "plot_clustermap",
    "set_memory_budget",
    "shared_subgraph",
    "spearman_agreement",
]
