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

# LRP's rules have no public path (Captum's own LRP tutorial imports them from here); a model
# with a layer Captum has no default rule for (nn.Flatten) needs one to use
# CaptumRelevance(LayerLRP): the tests and tutorials/09 take it from this file
from captum.attr._utils.lrp_rules import EpsilonRule

__all__ = [
    "BaselineType",
    "EpsilonRule",
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
