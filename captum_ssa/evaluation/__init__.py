"""Comparing attribution methods: ours beside Captum's, on faithfulness,
robustness and sanity metrics, with Quantus through one ``explain_func``.

- :func:`compare` -> :class:`ComparisonTable` (methods × metrics, mean ± std; a
  failed cell is NaN with its reason in ``.errors``; curves summarised by
  :func:`curve_auc`).
- Metrics usable alone: :func:`infidelity_score`, :func:`max_sensitivity`
  (Captum's), :func:`selectivity` (pixel flipping, AOPC), :func:`continuity`,
  :func:`topk_flip` (DeepDIVE), :func:`randomisation_check` (Adebayo et al.).
- :class:`GraphMaskedAttribution`, :func:`ssa_explainer`: SSA's class graphs as an
  input-shaped map (a gradient method through the graph's neurons only).
- :func:`quantus_explain`, :func:`run_quantus_metric`: Quantus without glue.
- Planted circuits, the ground truth of a graph: :func:`planted_network` ->
  :class:`PlantedNetwork` (MLP or small CNN with known class circuits),
  :func:`score_graph` -> :class:`PlantedScore` (precision, recall, F1 of kept
  neurons and edges), :func:`layer_attribution_graph` (Captum's layer methods
  as top-k graphs), :func:`missed_neurons`.
- The DeepDIVE robot arm: :func:`robot_arm_dataset`, :func:`robot_arm_jacobian`,
  :func:`train_robot_arm`, :func:`importance_agreement`, :func:`direction_agreement`.
"""

from captum_ssa.evaluation.compare import DEFAULT_METRICS, compare
from captum_ssa.evaluation.explainers import Explainer, explain_function
from captum_ssa.evaluation.faithfulness import (
    SelectivityResult,
    TopKFlipResult,
    selectivity,
    topk_flip,
)
from captum_ssa.evaluation.graph_attribution import GraphMaskedAttribution, ssa_explainer
from captum_ssa.evaluation.planted import (
    PlantedNetwork,
    PlantedScore,
    layer_attribution_graph,
    missed_neurons,
    planted_network,
    score_graph,
)
from captum_ssa.evaluation.quantus_adapter import quantus_explain, run_quantus_metric
from captum_ssa.evaluation.robot_arm import (
    AgreementRow,
    DirectionAgreement,
    ReLUTan,
    direction_agreement,
    importance_agreement,
    robot_arm_dataset,
    robot_arm_jacobian,
    robot_arm_position,
    train_robot_arm,
)
from captum_ssa.evaluation.robustness import continuity, infidelity_score, max_sensitivity
from captum_ssa.evaluation.sanity import (
    RandomisationResult,
    randomisable_layers,
    randomisation_check,
    spearman_rows,
)
from captum_ssa.evaluation.table import ComparisonTable, curve_auc

__all__ = [
    "DEFAULT_METRICS",
    "AgreementRow",
    "ComparisonTable",
    "DirectionAgreement",
    "Explainer",
    "GraphMaskedAttribution",
    "PlantedNetwork",
    "PlantedScore",
    "RandomisationResult",
    "ReLUTan",
    "SelectivityResult",
    "TopKFlipResult",
    "compare",
    "continuity",
    "curve_auc",
    "direction_agreement",
    "explain_function",
    "importance_agreement",
    "infidelity_score",
    "layer_attribution_graph",
    "max_sensitivity",
    "missed_neurons",
    "planted_network",
    "quantus_explain",
    "randomisable_layers",
    "randomisation_check",
    "robot_arm_dataset",
    "robot_arm_jacobian",
    "robot_arm_position",
    "run_quantus_metric",
    "score_graph",
    "selectivity",
    "spearman_rows",
    "ssa_explainer",
    "topk_flip",
    "train_robot_arm",
]
