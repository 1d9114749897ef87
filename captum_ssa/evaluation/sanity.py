"""The model-randomisation sanity check of Adebayo et al. (2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from captum_ssa._utils.warn import warn
from captum_ssa.evaluation.explainers import (
    ExplainerSpec,
    RefitError,
    explain_function,
    rebuild_on_copy,
)


@dataclass
class RandomisationResult:
    r"""
    Attributes:
        mode (str): ``"cascading"``, ``"independent"`` or ``"full"``.
        layers (list[str]): The randomised layers, top first; in cascading mode
                    row i has layers[0..i] re-initialised, in independent mode
                    only layers[i]; in full mode one row with all of them.
        correlations (numpy.ndarray): ``(rows, N)``, the Spearman rank
                    correlation of ``|attribution|`` between the trained and the
                    randomised model per example (NaN for a constant map, or for
                    a method that cannot be rebuilt on a copy).
    """

    mode: str
    layers: list[str]
    correlations: np.ndarray


def spearman_rows(first: Tensor, second: Tensor) -> np.ndarray:
    """Spearman rank correlation between matching rows (features flattened),
    with tied values sharing their average rank."""
    from scipy.stats import rankdata  # imported where used: scipy.stats takes a second

    a = rankdata(first.detach().flatten(1).cpu().double().numpy(), axis=1)
    b = rankdata(second.detach().flatten(1).cpu().double().numpy(), axis=1)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules with their own ``reset_parameters`` and parameters,
    in the model's order (the layers Quantus's MPRT randomises too)."""
    return [
        name
        for name, module in model.named_modules()
        if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(False))
    ]


def _reinitialise(names: Sequence[str], seed: int) -> Any:
    def randomise(model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in names:
            # one seed per layer: a layer gets the same new weights in every mode
            torch.manual_seed(seed + hash_name(name))
            modules[name].reset_parameters()

    return randomise


def hash_name(name: str) -> int:
    """A small deterministic integer per layer name (Python's hash is salted)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003


def randomisation_check(
    model: nn.Module,
    explainer: ExplainerSpec,
    inputs: Tensor,
    target: Any = None,
    mode: str = "cascading",
    layers: Optional[Sequence[str]] = None,
    seed: int = 0,
    fit_inputs: Any = None,
    attribute_kwargs: Optional[Mapping[str, Any]] = None,
) -> RandomisationResult:
    r"""
    The model-parameter randomisation test of Adebayo et al., "Sanity checks
    for saliency maps", 2018, arXiv:1810.03292: an explanation that depends on
    what the model learnt must change when the weights are re-initialised, so
    the Spearman correlation of ``|attribution|`` between the trained and the
    randomised model should be **low**.

    Layers are re-initialised with their own ``reset_parameters`` on a deep copy
    (the user's model is never modified), each from its own seed derived from
    ``seed`` and its name, so the same layer gets the same weights in every
    mode. ``mode="cascading"`` re-initialises from the top layer down,
    cumulatively; ``"independent"`` one layer at a time; ``"full"`` all at once.

    The explainer is rebuilt on every copy (see
    :mod:`captum_ssa.evaluation.explainers`): an ``Attribution`` object is deep
    copied with the model and re-fitted on ``fit_inputs`` if it has ``fit``; an
    :class:`Explainer` is built by its factory and fit hook. A plain callable
    gets NaN, and so does a method whose fit fails on the randomised model
    (LayeredInfluence needs two predicted classes), with a warning.

    Args:
        model (nn.Module): The trained model.
        explainer: An ``Attribution``, an :class:`Explainer` or a callable.
        inputs (Tensor): ``(N, ...)``.
        target: Captum's target.
        mode (str, optional): ``"cascading"``, ``"independent"`` or ``"full"``.
        layers (list[str], optional): Layer names in model order; default:
                    :func:`randomisable_layers`.
        seed (int, optional): Default: 0.
        fit_inputs (optional): Reference data to re-fit a fitted method.
        attribute_kwargs (dict, optional): Extra ``attribute`` arguments.

    Returns:
        :class:`RandomisationResult`.

    Examples::

        >>> result = randomisation_check(model, Saliency(model), x, target=y, mode="full")
        >>> result.correlations.mean()
    """
    names = list(layers) if layers is not None else randomisable_layers(model)
    top_down = names[::-1]
    if mode == "cascading":
        steps = [top_down[: i + 1] for i in range(len(top_down))]
    elif mode == "independent":
        steps = [[name] for name in top_down]
    elif mode == "full":
        steps = [top_down]
    else:
        raise ValueError(f"mode must be 'cascading', 'independent' or 'full', not {mode!r}")
    trained = explain_function(explainer, model, attribute_kwargs)(inputs, target=target)
    rows = []
    for step in steps:
        try:
            randomised = rebuild_on_copy(
                explainer, model, _reinitialise(step, seed), attribute_kwargs, fit_inputs
            )
        except RefitError as error:
            warn(f"{error}; its correlations are NaN")
            randomised = None
        if randomised is None:
            rows.append(np.full(len(inputs), np.nan))
        else:
            rows.append(spearman_rows(trained.abs(), randomised(inputs, target=target).abs()))
    labels = top_down if mode != "full" else ["all"]
    return RandomisationResult(mode=mode, layers=labels, correlations=np.stack(rows))
