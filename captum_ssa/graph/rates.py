"""What the graph evaluations return: the result records and the one-against-the-rest rates.

:class:`GraphEvaluation`, :class:`EnsembleEvaluation` and :class:`ClassRates`,
and the counts behind the rates (:func:`rate_counts`), which add up over
batches and ranks, so the evaluations in :mod:`~captum_ssa.graph.evaluation`
keep only counts while they read the data. Kept apart from the forward passes
so that :func:`class_rates` can score any predictions, not only a graph's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor


class GraphEvaluation(NamedTuple):
    """How well the network restricted to a dependency graph classifies.

    ``accuracy`` and ``model_accuracy`` are over all inputs, with and without
    the mask. ``kept_fraction`` is the fraction of the hidden layers' neurons
    that the graph keeps. The rest describe the graph's own class(es) C
    (``graph.target``), as a one-against-the-rest classifier:

    - ``true_positive_rate``: of the inputs labelled in C, the fraction the
      masked network assigns to their label (NaN when no input is in C);
    - ``precision``: of the inputs the masked network assigns to a class of
      C, the fraction whose label is that class (NaN when it assigns none);
    - ``false_positive_rate``: of the inputs labelled outside C, the
      fraction the masked network assigns to a class of C (NaN when every
      input is in C);
    - ``predicted_fraction``: the fraction of all inputs the masked network
      assigns to a class of C.

    A masked network that predicts C for every input has a true-positive
    rate of 1 and is useless; its false-positive rate of 1 and a
    ``predicted_fraction`` of 1 say so. All four are None for a graph
    without a target.
    """

    accuracy: float
    true_positive_rate: Optional[float]
    kept_fraction: float
    model_accuracy: float
    precision: Optional[float] = None
    false_positive_rate: Optional[float] = None
    predicted_fraction: Optional[float] = None


class ClassRates(NamedTuple):
    """One class (or set of classes) C against the rest, from predictions and labels.

    ``true_positive_rate``, ``precision``, ``false_positive_rate`` and
    ``predicted_fraction`` as in :class:`GraphEvaluation`; NaN where the
    fraction has no inputs to count.
    """

    true_positive_rate: float
    precision: float
    false_positive_rate: float
    predicted_fraction: float


class EnsembleEvaluation(NamedTuple):
    """How the class-specific ensemble classifies (:func:`evaluate_ensemble`).

    ``accuracy`` and ``model_accuracy`` are over all inputs, for the ensemble
    and the plain network; ``classes`` holds, for every class of the ensemble,
    its :class:`ClassRates` from the ensemble's predictions, so that a class
    the ensemble predicts for almost everything shows as such.
    """

    accuracy: float
    model_accuracy: float
    classes: dict[int, ClassRates]


# own, predicted, correct among own, correct among predicted, predicted among the rest
RATE_COUNTS = 5


def rate_counts(predictions: Tensor, labels: Tensor, classes: Sequence[int]) -> Tensor:
    """The counts behind :class:`ClassRates` (CPU int64), which add up over batches."""
    labels = labels.to(predictions.device)
    chosen = torch.tensor(list(classes), device=predictions.device)
    own = torch.isin(labels, chosen)
    predicted = torch.isin(predictions, chosen)
    hits = predictions == labels
    counted = [own, predicted, hits & own, hits & predicted, predicted & ~own]
    return torch.stack([c.sum() for c in counted]).cpu()


def rates_from_counts(counts: Tensor, examples: int) -> ClassRates:
    """:class:`ClassRates` from :func:`rate_counts` over ``examples`` inputs."""
    own, predicted, hits_own, hits_predicted, false_positives = (int(c) for c in counts)

    def fraction(part: int, whole: int) -> float:
        return part / whole if whole else math.nan

    return ClassRates(
        true_positive_rate=fraction(hits_own, own),
        precision=fraction(hits_predicted, predicted),
        false_positive_rate=fraction(false_positives, examples - own),
        predicted_fraction=fraction(predicted, examples),
    )


def class_rates(predictions: Tensor, labels: Tensor, classes: Sequence[int]) -> ClassRates:
    r"""
    The one-against-the-rest rates of the classes ``classes`` (see :class:`ClassRates`).

    Args:
        predictions (Tensor): ``(N,)`` predicted classes.
        labels (Tensor): ``(N,)`` true classes.
        classes (Sequence[int]): The class(es) C counted as positive.

    Returns:
        *ClassRates*; a fraction with nothing to count is NaN.

    Examples::

        >>> rates = class_rates(torch.tensor([3, 3, 1, 1]), torch.tensor([3, 1, 1, 1]), [3])
        >>> rates.precision, rates.predicted_fraction
        (0.5, 0.5)
    """
    return rates_from_counts(rate_counts(predictions, labels, classes), len(predictions))


def correct_counts(first: Tensor, second: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """How many of each of two predictions match the labels (CPU counts)."""
    return (first == labels).sum().cpu(), (second == labels).sum().cpu()


def examples_in(totals: Tensor) -> tuple[int, int, int]:
    """The first three counts, after a check that there were examples at all."""
    examples, first, second = (int(t) for t in totals[:3])
    if examples == 0:
        raise ValueError("inputs holds no batches: expected at least one example")
    return examples, first, second
