"""SSA's options, checked and resolved before any forward pass.

:meth:`StepwiseSensitivity.attribute` and ``class_graphs`` share many
options. :func:`resolve_options` checks them all in one place, before any
forward pass so that a bad option costs no model run, and resolves the
relevance function; :func:`make_setting` turns them into the
:class:`~captum_ssa._utils.ssa_streaming.Setting` that every pass reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

from torch.nn import Module

from captum_ssa._utils.segment import is_weighted_layer
from captum_ssa._utils.ssa_passes import Thresholds
from captum_ssa._utils.ssa_steps import AGGREGATIONS
from captum_ssa._utils.ssa_streaming import PASSES, Setting
from captum_ssa._utils.validation import positive_int
from captum_ssa.relevance import PRESETS, RelevanceFunction, resolve_relevance

MODES = ("global", "local")


class Options(NamedTuple):
    """The checked options: Step I's relevance function, Step IV's thresholds and
    the upper neurons per relevance call."""

    relevance: RelevanceFunction
    relevance_name: str
    thresholds: Thresholds
    upper_neurons_per_chunk: Optional[int]


def resolve_options(
    relevance: Any,
    absolute: bool,
    aggregation: str,
    mode: str,
    percentile: float,
    branching: Optional[int],
    max_neurons: Optional[int],
    upper_neurons_per_chunk: Optional[int],
    passes: str,
    target: Any,
    stream: bool,
) -> Options:
    """Check the options of ``StepwiseSensitivity.attribute`` (``stream``: whether
    the inputs are a stream of batches) and resolve the relevance function."""
    relevance_function, relevance_name = resolve_relevance(relevance)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if relevance_function in PRESETS.values() and not absolute:
        raise ValueError(
            f"relevance={relevance_name!r} is one of the paper's strategies, which fix "
            "where the absolute value goes; absolute=False applies to 'gradient', "
            "'activation', 'gradient_x_activation', 'weight' and 'weight_activation'"
        )
    absolute_of_mean = getattr(relevance_function, "absolute_after_aggregation", False)
    if absolute_of_mean and aggregation != "mean":
        raise ValueError(
            f"relevance={relevance_name!r} is the absolute value of the mean over the "
            f"data, so it needs aggregation='mean', not {aggregation!r}; for Tukey "
            "outliers use 'activation' or 'weight_activation' (absolute per example)"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(percentile, bool) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
    if passes not in PASSES:
        raise ValueError(f"passes must be one of {PASSES}, got {passes!r}")
    if isinstance(target, str) and (target != "labels" or not stream):
        raise ValueError(
            "target='labels' takes each example's target from the labels of a stream of "
            "(inputs, labels) batches such as a DataLoader; for one batch pass the "
            f"targets themselves (one int per example); got target={target!r}"
        )
    branching = positive_int("branching", branching)
    max_neurons = positive_int("max_neurons", max_neurons)
    return Options(
        relevance_function,
        relevance_name,
        Thresholds(mode, percentile, branching, max_neurons, absolute_of_mean),
        positive_int("upper_neurons_per_chunk", upper_neurons_per_chunk),
    )


def make_setting(
    forward_func: Callable[..., Any],
    layers: list[Module],
    layer_names: list[str],
    neuron_dim: Optional[int],
    model: Optional[Module],
    additional_forward_args: Any,
    options: Options,
    absolute: bool,
    aggregation: str,
) -> Setting:
    """The :class:`Setting` of one call, from the explainer and its checked options."""
    return Setting(
        forward_func=forward_func,
        layers=layers,
        layer_names=layer_names,
        neuron_dim=neuron_dim,
        additional_forward_args=additional_forward_args,
        modules=list(model.modules()) if model is not None else layers,
        # The seed below a layer stands for the layer's own weights: only valid
        # when no hook of the user's changes what the layer outputs.
        keep_input=[
            position > 0
            and is_weighted_layer(layer)
            and not (layer._forward_hooks or layer._forward_pre_hooks)
            for position, layer in enumerate(layers)
        ],
        relevance=options.relevance,
        absolute=absolute,
        aggregation=aggregation,
        upper_neurons_per_chunk=options.upper_neurons_per_chunk,
    )
