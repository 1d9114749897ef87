"""``compare``: every explainer on every metric, as one table that a failing cell
cannot lose."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_ssa._utils._compat import progress
from captum_ssa._utils.model_state import weights_fingerprint
from captum_ssa._utils.warn import warn
from captum_ssa.evaluation.explainers import (
    AttributeFunction,
    ExplainerSpec,
    RefitError,
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
    scores = metric(
        model=case.model,
        x_batch=case.inputs.detach().cpu().numpy(),
        y_batch=case.targets.cpu().numpy(),
        a_batch=None,
        explain_func=_explain_on_quantus_models(case),
        device=str(case.inputs.device),
    )
    if isinstance(scores, dict):  # MPRT: one list per randomised layer; keep the last
        scores = list(scores.values())[-1]
    return np.asarray(scores, dtype=float)


def _explain_on_quantus_models(case: _Case) -> Callable[..., np.ndarray]:
    """Quantus's ``explain_func`` for ``case``: on the user's model its attributions;
    on Quantus's copies, which its randomisation metrics (MPRT, SmoothMPRT,
    EfficientMPRT) change in place between calls, the method rebuilt and re-fitted on
    ``fit_inputs`` whenever the copy's weights changed, and NaN with a warning where
    the changed model cannot be fitted."""
    # id(model) -> (model, its weights when the method was rebuilt, the rebuilt method);
    # the model is kept so that its id cannot be reused by another object
    rebuilt: dict[int, tuple[nn.Module, Any, Optional[AttributeFunction]]] = {}

    def explain_on(model: nn.Module) -> Optional[AttributeFunction]:
        if model is case.model:
            return case.explain
        fingerprint = weights_fingerprint(model)
        cached = rebuilt.get(id(model))
        if cached is not None and cached[1] == fingerprint:
            return cached[2]
        try:
            explain = method_on(
                case.spec, case.model, model, case.attribute_kwargs, case.fit_inputs
            )
            if explain is None:
                raise ValueError("a plain callable cannot be rebuilt on Quantus's model copies")
        except RefitError as error:
            warn(f"{error}; its Quantus scores on this model are NaN")
            explain = None
        rebuilt[id(model)] = (model, fingerprint, explain)
        return explain

    def explain_func(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(inputs), dtype=case.inputs.dtype)
        explain = explain_on(model)
        if explain is None:
            return np.full(x.shape, np.nan, dtype=np.float32)
        y = torch.as_tensor(np.asarray(targets)).long()
        return (
            explain(x.to(case.inputs.device), target=y.to(case.inputs.device))
            .detach()
            .cpu()
            .numpy()
        )

    return explain_func


@dataclass
class _Failure:
    """Why a method or one of its cells could not be computed."""

    reason: str


Result = TypeVar("Result")


def _attempt(compute: Callable[..., Result], *args: Any) -> Union[Result, _Failure]:
    try:
        return compute(*args)
    except Exception as error:  # one failing cell must not lose the table
        return _Failure(f"{type(error).__name__}: {error}")


def _case(
    model: nn.Module,
    spec: ExplainerSpec,
    inputs: Tensor,
    targets: Tensor,
    attribute_kwargs: dict[str, Any],
    fit_inputs: Any,
) -> _Case:
    explain = explain_function(spec, model, attribute_kwargs)
    attributions = explain(inputs, target=targets).detach()
    return _Case(model, spec, explain, attributions, inputs, targets, attribute_kwargs, fit_inputs)


def _cell(case: _Case, metric: str, options: dict[str, Any]) -> Any:
    if metric.startswith("quantus:"):
        return _quantus_metric(metric.split(":", 1)[1], case, **options)
    cell = _METRICS[metric][0](case, **options)
    return cell.detach().cpu() if isinstance(cell, Tensor) else cell


def compare(
    model: nn.Module,
    explainers: Mapping[str, ExplainerSpec],
    inputs: Tensor,
    targets: Any,
    metrics: Optional[Sequence[str]] = None,
    attribute_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    metric_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    fit_inputs: Any = None,
    show_progress: bool = False,
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
    needs the extra ``captum-ssa[quantus]``). A curve-valued Quantus metric
    (``PixelFlipping``, ``RegionPerturbation``, ``Selectivity``) keeps its curves
    in ``.values`` and is summarised by their area (:func:`curve_auc`: trapezoids
    over x evenly spread on [0, 1], the curve's mean height); MPRT and SmoothMPRT
    by their last layer (everything randomised).

    Methods with a ``fit`` (InactiveStateSensitivity, LayeredInfluence) are
    re-fitted on ``fit_inputs`` on every randomised model, the built-in
    ``"randomisation"`` and Quantus's randomisation metrics alike; where a
    randomised model cannot be fitted (LayeredInfluence needs two predicted
    classes) its scores are NaN, with a warning.

    A cell that fails (the method, or the metric on it, raises) is NaN and its
    reason is kept in ``.errors`` and printed under the table, with a warning;
    the other cells are computed as usual.

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
        show_progress (bool, optional): Show a progress bar over the (method,
                    metric) cells. Default: False, as for Captum's methods.

    Returns:
        :class:`ComparisonTable`, mean ± std over examples, raw values in
        ``.values``, failed cells' reasons in ``.errors``.

    Examples::

        >>> table = compare(model, {"Saliency": Saliency(model),
        ...                         "IG": IntegratedGradients(model)}, x, y,
        ...                 attribute_kwargs={"IG": {"n_steps": 32}})
        >>> print(table.to_markdown()); table.plot()
    """
    metrics = list(metrics or DEFAULT_METRICS)
    unknown = [m for m in metrics if m not in _METRICS and not m.startswith("quantus:")]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {sorted(_METRICS)}")
    targets = torch.as_tensor(targets, device=inputs.device).long().reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(len(inputs)).clone()
    values: dict[str, dict[str, Any]] = {name: {} for name in explainers}
    errors: dict[str, dict[str, str]] = {name: {} for name in explainers}
    cases: dict[str, Union[_Case, _Failure]] = {}
    cells = [(name, metric) for name in explainers for metric in metrics]
    for name, metric in progress(
        cells, desc="compare", total=len(cells), disable=not show_progress
    ):
        if name not in cases:
            kwargs = dict((attribute_kwargs or {}).get(name, {}))
            spec = explainers[name]
            cases[name] = _attempt(_case, model, spec, inputs, targets, kwargs, fit_inputs)
        case = cases[name]
        options = dict((metric_kwargs or {}).get(metric, {}))
        cell = case if isinstance(case, _Failure) else _attempt(_cell, case, metric, options)
        if isinstance(cell, _Failure):
            warn(f"compare: {name} on {metric} failed, its cell is NaN ({cell.reason})")
            values[name][metric] = np.full(len(inputs), np.nan)
            errors[name][metric] = cell.reason
        else:
            values[name][metric] = cell
    better = {m: _METRICS[m][1] if m in _METRICS else "" for m in metrics}
    notes = {m: _METRICS[m][2] if m in _METRICS else "Quantus" for m in metrics}
    table = table_from_values(values, better, notes, errors)
    for metric in metrics:
        if any(row[metric].ndim == 2 for row in table.values.values()):
            table.notes[metric] += "; per-example curves, summarised by their area (curve_auc)"
    return table
