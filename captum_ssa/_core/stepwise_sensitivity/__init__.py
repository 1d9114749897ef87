"""Step-wise sensitivity analysis (SSA): the dependency graph of a decision.

Dimanov and Jamnik's four Steps are the four functions of ``steps.py``:
:func:`relevance_tensor` (I), :func:`aggregate_datapoints` (II),
:func:`aggregate_upper_neurons` (III) and :func:`threshold` (IV). The rest of
the package runs them over a model and a dataset:

- ``explainer.py``: :class:`StepwiseSensitivity`, the public class;
- ``options.py``: the options of a call, checked in one place;
- ``starts.py``: where each graph starts (``target``, ``top_neurons``, classes);
- ``network.py``: the listed layers, one forward pass and the layer checks;
- ``passes.py``: the passes over the data, Steps I-II per batch, III-IV after;
- ``relevance.py``: Step I's relevance functions and their extension point
  (public as ``captum_ssa.relevance``);
- ``segment.py``: gradients across the segment between two listed layers;
- ``weighted_connection.py``: the one Linear/Conv between two listed layers,
  for the weight-based relevances.
"""

from captum_ssa._core.stepwise_sensitivity.explainer import StepwiseSensitivity
from captum_ssa._core.stepwise_sensitivity.steps import (
    aggregate_datapoints,
    aggregate_upper_neurons,
    relevance_tensor,
    threshold,
)

__all__ = [
    "StepwiseSensitivity",
    "aggregate_datapoints",
    "aggregate_upper_neurons",
    "relevance_tensor",
    "threshold",
]
