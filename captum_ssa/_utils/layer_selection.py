"""Scoring candidate layers for LayeredInfluence (METHODS.md §4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

_MAX_FOLDS = 5


def neuron_activities(layer_output: Tensor) -> Tensor:
    """``(N, neurons)``: a unit's value, or a channel's spatial mean (dim 1 is
    the neuron axis, METHODS.md notation)."""
    if layer_output.dim() == 1:
        return layer_output[:, None]
    return layer_output.reshape(*layer_output.shape[:2], -1).mean(2)


def linear_probe_accuracy(activities: Tensor, labels: Tensor) -> float:
    """Cross-validated accuracy of a logistic regression predicting ``labels``.

    Features are standardised inside each fold; folds are stratified and
    seeded, so the score is deterministic.
    """
    label_array = labels.cpu().numpy()
    smallest_class = int(np.unique(label_array, return_counts=True)[1].min())
    if smallest_class < 2:
        raise ValueError(
            'criterion="linear" cross-validates a linear probe, so every predicted '
            "class needs at least 2 reference points; one class has "
            f"{smallest_class}. Use more reference data or "
            'criterion="dispersion"'
        )
    folds = StratifiedKFold(n_splits=min(_MAX_FOLDS, smallest_class), shuffle=True, random_state=0)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    features = activities.detach().to(torch.float64).cpu().numpy()
    return float(cross_val_score(probe, features, label_array, cv=folds).mean())


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
