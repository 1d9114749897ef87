"""Scoring candidate layers for LayeredInfluence: a linear probe per layer, or the
dispersion (Gini coefficient) of its units' influence."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from captum_ssa._utils.warn import warn

_MAX_FOLDS = 5


def neuron_activities(layer_output: Tensor) -> Tensor:
    """``(N, neurons)``: a unit's value, or a channel's spatial mean (dim 1 is
    the neuron axis)."""
    if layer_output.dim() == 1:
        return layer_output[:, None]
    return layer_output.reshape(*layer_output.shape[:2], -1).mean(2)


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
