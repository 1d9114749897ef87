"""``compare``: every explainer on every metric, as one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from captum_ssa.evaluation.explainers import (
    AttributeFunction,
    ExplainerSpec,
    explain_function,
    method_on,
)
from captum_ssa.evaluation.faithfulness import selectivity, topk_flip
from captum_ssa.evaluation.robustness import continuity, infidelity_score, max_sensitivity
from captum_ssa.evaluation.sanity import randomisation_check
from captum_ssa.evaluation.table import ComparisonTable, table_from_values


@dataclass
class _Case:
    """What a metric sees of one method."""

    model: nn.Module
    spec: ExplainerSpec
    explain: AttributeFunction
    attributions: Tensor
    inputs: Tensor
    targets: Tensor
    attribute_kwargs: Mapping[str, Any]
    fit_inputs: Any


def _infidelity(case: _Case, **kwargs: Any) -> Any:
    return infidelity_score(case.model, case.explain, case.inputs, case.targets, **kwargs)


def _sensitivity(case: _Case, **kwargs: Any) -> Any:
    return max_sensitivity(case.explain, case.inputs, case.targets, **kwargs)


def _selectivity(case: _Case, **kwargs: Any) -> Any:
    return selectivity(case.model, case.inputs, case.attributions, case.targets, **kwargs).aopc


def _continuity(case: _Case, **kwargs: Any) -> Any:
    return continuity(case.explain, case.inputs, case.targets, **kwargs)


def _topk_flip(case: _Case, k: int = 5, **kwargs: Any) -> Any:
    return topk_flip(case.model, case.inputs, case.attributions, k_max=k, **kwargs).flipped[:, -1]


def _randomisation(case: _Case, **kwargs: Any) -> Any:
    kwargs.setdefault("mode", "full")
    result = randomisation_check(
        case.model,
        case.spec,
        case.inputs,
        case.targets,
        fit_inputs=case.fit_inputs,
        attribute_kwargs=case.attribute_kwargs,
        **kwargs,
    )
    return result.correlations[-1]


# name -> (metric on one method, which way is better, what it computes with its defaults)
_METRICS: dict[str, tuple[Callable[..., Any], str, str]] = {
    "infidelity": (_infidelity, "lower", "Captum infidelity, Gaussian noise std 0.1, normalised"),
    "sensitivity_max": (_sensitivity, "lower", "Captum sensitivity_max, radius 0.02"),
    "selectivity": (_selectivity, "higher", "pixel-flipping AOPC of the target probability"),
    "continuity": (_continuity, "lower", "max ||ΔA|| / ||Δx|| over 8 uniform moves of ±0.02"),
    "topk_flip": (_topk_flip, "higher", "prediction changed by zeroing the top 5 |attributions|"),
    "randomisation": (
        _randomisation,
        "lower",
        "Spearman of |attribution|, trained vs fully re-initialised model",
    ),
}

DEFAULT_METRICS = tuple(_METRICS)


def _quantus_metric(name: str, case: _Case, **kwargs: Any) -> np.ndarray:
    from captum_ssa.evaluation.quantus_adapter import require_quantus

    quantus = require_quantus()
    kwargs.setdefault("return_aggregate", False)  # per-example scores: the table's spread
    metric = getattr(quantus, name)(disable_warnings=True, display_progressbar=False, **kwargs)
    moved: dict[int, Optional[AttributeFunction]] = {id(case.model): case.explain}

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
        # Quantus hands over the user's model or its own (randomised) copies
        if id(model) not in moved:
            moved[id(model)] = method_on(
                case.spec, case.model, model, case.attribute_kwargs, case.fit_inputs
            )
        explain = moved[id(model)]
        if explain is None:
            raise ValueError("a plain callable cannot be rebuilt on Quantus's model copies")
        x = torch.as_tensor(np.asarray(inputs), dtype=case.inputs.dtype)
        y = torch.as_tensor(np.asarray(targets)).long()
        return (
            explain(x.to(case.inputs.device), target=y.to(case.inputs.device))
            .detach()
            .cpu()
            .numpy()
        )

    scores = metric(
        model=case.model,
        x_batch=case.inputs.detach().cpu().numpy(),
        y_batch=case.targets.cpu().numpy(),
        a_batch=None,
        explain_func=explain_func,
        device=str(case.inputs.device),
    )
    if isinstance(scores, dict):  # MPRT: one list per randomised layer; keep the last
        scores = list(scores.values())[-1]
    return np.asarray(scores, dtype=float).reshape(-1)


def compare(
    model: nn.Module,
    explainers: Mapping[str, ExplainerSpec],
    inputs: Tensor,
    targets: Any,
    metrics: Optional[Sequence[str]] = None,
    attribute_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    metric_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    fit_inputs: Any = None,
) -> ComparisonTable:
    r"""
    Compare attribution methods on the same examples and metrics.

    Metrics (per example; see each function for its definition):
    ``"infidelity"`` (:func:`infidelity_score`, Captum), ``"sensitivity_max"``
    (:func:`max_sensitivity`, Captum), ``"selectivity"`` (:func:`selectivity`,
    AOPC), ``"continuity"`` (:func:`continuity`), ``"topk_flip"``
    (:func:`topk_flip`, flipped by the top 5), ``"randomisation"``
    (:func:`randomisation_check`, full re-initialisation), and any Quantus
    metric as ``"quantus:<Name>"`` (e.g. ``"quantus:FaithfulnessCorrelation"``;
    needs the extra ``captum-ssa[quantus]``).

    Args:
        model (nn.Module): The model, in eval mode; it is never modified.
        explainers (dict): name -> a Captum ``Attribution`` object (Captum's or
                    ours, e.g. ``SwitchedLinearProjection(model, model.fc2)``,
                    a fitted ``InactiveStateSensitivity`` or ``LayeredInfluence``),
                    an :class:`Explainer` (a factory ``model -> method`` with an
                    optional fit hook), or a callable ``(inputs, target) ->
                    attributions`` (model-copy metrics give it NaN).
        inputs (Tensor): ``(N, ...)``.
        targets (int, list or Tensor): The class explained for each example.
        metrics (list[str], optional): Default: every built-in metric.
        attribute_kwargs (dict, optional): explainer name -> extra ``attribute``
                    arguments, e.g. ``{"IntegratedGradients": {"n_steps": 32}}``.
        metric_kwargs (dict, optional): metric name -> its keyword arguments,
                    e.g. ``{"topk_flip": {"k": 3}, "continuity": {"radius": 0.05}}``.
        fit_inputs (optional): Reference data to re-fit our fitted methods
                    (given as objects) on randomised model copies.

    Returns:
        :class:`ComparisonTable`, mean ± std over examples, raw values in ``.values``.

    Examples::

        >>> table = compare(model, {"Saliency": Saliency(model),
        ...                         "IG": IntegratedGradients(model)}, x, y,
        ...                 attribute_kwargs={"IG": {"n_steps": 32}})
        >>> print(table.to_markdown()); table.plot()
    """
    metrics = list(metrics or DEFAULT_METRICS)
    targets = torch.as_tensor(targets, device=inputs.device).long().reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(len(inputs)).clone()
    values: dict[str, dict[str, Any]] = {}
    for name, spec in explainers.items():
        kwargs = dict((attribute_kwargs or {}).get(name, {}))
        explain = explain_function(spec, model, kwargs)
        attributions = explain(inputs, target=targets).detach()
        case = _Case(model, spec, explain, attributions, inputs, targets, kwargs, fit_inputs)
        row = values[name] = {}
        for metric in metrics:
            options = dict((metric_kwargs or {}).get(metric, {}))
            if metric.startswith("quantus:"):
                row[metric] = _quantus_metric(metric.split(":", 1)[1], case, **options)
            elif metric in _METRICS:
                cell = _METRICS[metric][0](case, **options)
                row[metric] = cell.detach().cpu() if isinstance(cell, Tensor) else cell
            else:
                raise ValueError(f"unknown metric {metric!r}; known: {sorted(_METRICS)}")
    better = {m: _METRICS[m][1] if m in _METRICS else "" for m in metrics}
    notes = {m: _METRICS[m][2] if m in _METRICS else "Quantus" for m in metrics}
    return table_from_values(values, better, notes)
