"""How ``LayeredInfluence.fit`` chooses its layer and keeps its reference.

:func:`fit_reference` reads the reference once for a given layer or a single
candidate, or twice to choose: first the candidates' probe features, scored
by a linear probe or by the dispersion of the units' influence, then the
chosen layer's activations, which are all that is kept. Kept apart from the
explainer, whose module holds the API and its documentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.batches import is_batch_stream
from captum_ssa._utils.influence_measure import monotone_influence
from captum_ssa._utils.layer_selection import (
    gini_coefficient,
    linear_probe_accuracy,
    lowest_within_tolerance,
)
from captum_ssa._utils.model_state import untouched_model
from captum_ssa._utils.reference_activations import LayerReference, Probe, ReferenceReader

CRITERIA = ("linear", "dispersion")
LayerChoice = Union[Module, str, None]


def check_choice_options(criterion: str, tolerance: float) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")


def candidate_index(
    layer: Union[Module, str], candidates: Sequence[Module], names: list[str]
) -> int:
    """The position of ``layer`` (a module or its name) among the candidates."""
    for position, (candidate, name) in enumerate(zip(candidates, names)):
        if layer is candidate or (isinstance(layer, str) and layer == name):
            return position
    shown = layer if isinstance(layer, str) else type(layer).__name__
    raise ValueError(
        f"layer {shown!r} is not one of the candidate layers {names}; "
        "pass one of them (a module or its name) or add it to layers"
    )


def fit_reference(
    reader: ReferenceReader,
    forward_func: Callable[..., Any],
    reference: Any,
    names: list[str],
    criterion: str,
    tolerance: float,
    given: Optional[int],
    sample_points: Optional[int],
) -> tuple[LayerReference, Tensor, int, dict[str, float]]:
    """The kept reference activations and labels, the chosen candidate and the
    score table (empty when ``given`` or a single candidate leaves no choice)."""
    with untouched_model(forward_func), torch.no_grad():
        if given is not None or len(names) == 1:
            chosen, table, rows_per_rank = (0 if given is None else given), {}, None
        else:
            check_readable_twice(reference)
            probe = reader.probe(reference, criterion, sample_points)
            check_two_classes(probe.labels)
            scores = []
            # a loop here, scoring in this frame, so that the probe's warnings
            # point at the caller of fit
            for position in probe.call_order:
                if criterion == "linear":
                    scores.append(linear_probe_accuracy(probe.features[position], probe.labels))
                else:
                    scores.append(dispersion_score(probe, position))
            best = (
                lowest_within_tolerance(scores, tolerance)
                if criterion == "linear"
                else max(range(len(scores)), key=scores.__getitem__)
            )
            chosen = probe.call_order[best]
            table = {names[p]: score for p, score in zip(probe.call_order, scores)}
            rows_per_rank = probe.rows_per_rank
            del probe  # its features and subsample are not kept past the choice
        kept, labels = reader.keep(reference, chosen, rows_per_rank)
    check_two_classes(labels)
    return kept, labels, chosen, table


def dispersion_score(probe: Probe, position: int) -> float:
    """Gini coefficient of mean |phi| over the subsample ("dispersion")."""
    assert probe.sample_labels is not None
    sample = probe.samples[position]
    sample = sample - sample.mean(0)  # centred, for accurate distances
    # the subsample is both the queries and the reference set
    influence = monotone_influence(sample, probe.sample_labels, sample, probe.sample_labels)
    return gini_coefficient(influence.abs().mean(0))


def check_readable_twice(reference: Any) -> None:
    """Choosing the layer reads the reference twice: an iterator cannot be."""
    if is_batch_stream(reference) and iter(reference) is reference:
        raise ValueError(
            "reference is an iterator, which can be read only once, but fit reads the "
            "reference twice when it chooses the layer (the candidates' probe features, "
            "then the chosen layer's activations): pass a DataLoader or a list of "
            "batches, or give layer= to read it once"
        )


def check_two_classes(labels: Tensor) -> None:
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError(
            f"the model predicts one class ({classes.tolist()}) for every "
            "reference point: the influence measure compares each point with "
            "differently-labelled points, so the reference set needs at "
            "least two predicted classes"
        )
