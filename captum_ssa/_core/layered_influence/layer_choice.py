"""Which layer LayeredInfluence explains with: its candidate layers, and how ``fit``
chooses among them, by a linear probe per layer (the lowest layer within
``tolerance`` of the best accuracy) or by the dispersion (Gini coefficient) of its
units' influence."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.layered_influence.influence import SequenceLengths, monotone_influence
from captum_ssa._core.layered_influence.reference import Probe
from captum_ssa._utils.hooks import check_layers_in_model, model_of, unique_layer_names
from captum_ssa._utils.warn import warn

CRITERIA = ("linear", "dispersion")
LayerChoice = Union[Module, str, None]

_MAX_FOLDS = 5


@dataclass(frozen=True)
class CandidateLayers:
    """The layers an explainer chooses among, in the order given, with their names in
    the model; one is picked by the module or by its name."""

    layers: list[Module]
    names: list[str]

    @classmethod
    def of(
        cls, forward_func: Callable[..., Any], layers: Union[Module, Sequence[Module]]
    ) -> CandidateLayers:
        """The candidates, checked: at least one, each in the model, none twice."""
        candidates = [layers] if isinstance(layers, Module) else list(layers)
        if not candidates:
            raise ValueError("layers is empty: give at least one candidate layer")
        check_layers_in_model(forward_func, candidates)
        if len({id(layer) for layer in candidates}) < len(candidates):
            raise ValueError("layers lists the same module more than once")
        return cls(candidates, unique_layer_names(model_of(forward_func), candidates))

    def index(self, layer: Union[Module, str]) -> int:
        """The position of ``layer`` (a module or its name) among the candidates."""
        for position, (candidate, name) in enumerate(zip(self.layers, self.names)):
            if layer is candidate or (isinstance(layer, str) and layer == name):
                return position
        shown = layer if isinstance(layer, str) else type(layer).__name__
        raise ValueError(
            f"layer {shown!r} is not one of the candidate layers {self.names}; "
            "pass one of them (a module or its name) or add it to layers"
        )


def check_choice_options(criterion: str, tolerance: float) -> None:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")


def choose_layer(
    probe: Probe, names: Sequence[str], criterion: str, tolerance: float
) -> tuple[int, dict[str, float]]:
    """The chosen candidate's position and the score table, layer name to score,
    lowest layer first."""
    scores = [
        linear_probe_accuracy(probe.features[position], probe.labels)
        if criterion == "linear"
        else dispersion_score(probe, position)
        for position in probe.call_order
    ]
    best = (
        lowest_within_tolerance(scores, tolerance)
        if criterion == "linear"
        else max(range(len(scores)), key=scores.__getitem__)
    )
    table = {names[position]: score for position, score in zip(probe.call_order, scores)}
    return probe.call_order[best], table


def dispersion_score(probe: Probe, position: int) -> float:
    """Gini coefficient of mean |phi| over the subsample ("dispersion")."""
    assert probe.sample_labels is not None
    sample = probe.samples[position]
    sequences = probe.sample_lengths[position] if probe.sample_lengths else None
    if sequences is None:
        sample = sample - sample.mean(0)  # centred, for accurate distances
        # the subsample is both the queries and the reference set
        influence = monotone_influence(sample, probe.sample_labels, sample, probe.sample_labels)
        return gini_coefficient(influence.abs().mean(0))
    # token sequences: a unit is a (position, feature) of the real tokens, its mean
    # |phi| over the points that have that position
    lengths, width = sequences
    lengths = lengths.to(sample.device)
    influence = monotone_influence(
        sample,
        probe.sample_labels,
        sample,
        probe.sample_labels,
        lengths=SequenceLengths(lengths, lengths, width),
    )
    positions = sample.shape[1] // width
    points = (torch.arange(positions, device=sample.device) < lengths[:, None]).sum(0)
    by_position = influence.abs().reshape(len(sample), positions, width).sum(0)
    present = points > 0  # zero columns beyond every sample's length are no units
    return gini_coefficient(by_position[present] / points[present][:, None])


def linear_probe_accuracy(activities: Tensor, labels: Tensor) -> float:
    """Cross-validated accuracy of a logistic regression predicting ``labels``.

    Features are standardised inside each fold; folds are stratified and
    seeded, so the score is deterministic. A class with a single reference
    point cannot be cross-validated and is left out, with a warning.
    """
    label_array = labels.cpu().numpy()
    classes, counts = np.unique(label_array, return_counts=True)
    kept = np.isin(label_array, classes[counts >= 2])
    if len(classes[counts >= 2]) < 2:
        raise ValueError(
            'criterion="linear" cross-validates a linear probe, so at least two '
            "predicted classes need 2 or more reference points each; got counts "
            f"{dict(zip(classes.tolist(), counts.tolist()))}. Use more reference "
            'data or criterion="dispersion"'
        )
    if not kept.all():
        warn(
            f"the linear probe leaves out classes {classes[counts < 2].tolist()}, "
            "predicted for only one reference point each",
        )
    # scikit-learn is imported here, not with the package: only this probe uses it
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(
        n_splits=min(_MAX_FOLDS, int(counts[counts >= 2].min())), shuffle=True, random_state=0
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    features = activities.detach().to(torch.float64).cpu().numpy()[kept]
    return float(cross_val_score(probe, features, label_array[kept], cv=folds).mean())


def gini_coefficient(values: Tensor) -> float:
    r"""Gini coefficient of non-negative values: 0 when all are equal,
    :math:`(n - 1) / n` when one holds everything (0 for all zeros)."""
    ordered = values.detach().flatten().to(torch.float64).sort().values
    total = ordered.sum()
    if total <= 0:
        return 0.0
    n = ordered.numel()
    ranks = torch.arange(1, n + 1, dtype=torch.float64, device=ordered.device)
    return float(((2 * ranks - n - 1) * ordered).sum() / (n * total))


def lowest_within_tolerance(scores: Sequence[float], tolerance: float) -> int:
    """Index of the first score (lowest layer) within ``tolerance`` of the best."""
    best = max(scores)
    return next(i for i, score in enumerate(scores) if score >= best - tolerance)
