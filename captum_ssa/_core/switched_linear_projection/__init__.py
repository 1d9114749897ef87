"""Switched linear projections (Szymanski, McCane & Atkinson, 2019).

:mod:`.explainer` holds the Captum interface and its documentation,
:mod:`.neuron_selection` chooses the neuron and reads it from the network, and
:mod:`.projection` is the per-example arithmetic of the projection.
"""

from captum_ssa._core.switched_linear_projection.explainer import (
    SwitchedLinearProjection,
    SwitchedProjection,
)

__all__ = ["SwitchedLinearProjection", "SwitchedProjection"]
