"""captum-ssa: internal interpretability methods for Captum.

Which neurons, in which layers, linked how, carry a decision:

- :class:`SwitchedLinearProjection`: a ReLU network's neuron as one exact
  linear projection of the input, with a per-feature decomposition.
- :class:`InactiveStateSensitivity` (Insens): what keeps a layer's inactive
  neurons off.
"""

from captum_ssa._core.inactive_state_sensitivity import InactiveStateSensitivity
from captum_ssa._core.switched_linear_projection import (
    SwitchedLinearProjection,
    SwitchedProjection,
)
from captum_ssa._utils.hooks import ReusedLayerError

__version__ = "0.1.0"

__all__ = [
    "InactiveStateSensitivity",
    "ReusedLayerError",
    "SwitchedLinearProjection",
    "SwitchedProjection",
]
