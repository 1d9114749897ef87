"""The one home of every private Captum import.

Captum's ``_utils`` helpers are not part of its public API and move between
releases; importing them only here means a Captum upgrade touches one file.
"""

from captum._utils.common import (
    _format_additional_forward_args,
    _format_baseline,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
    _verify_select_neuron,
)
from captum._utils.progress import progress
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr._utils.common import _tensorize_baseline

__all__ = [
    "BaselineType",
    "TargetType",
    "TensorOrTupleOfTensorsGeneric",
    "_format_additional_forward_args",
    "_format_baseline",
    "_format_output",
    "_format_tensor_into_tuples",
    "_is_tuple",
    "_select_targets",
    "_tensorize_baseline",
    "_verify_select_neuron",
    "progress",
]
