"""One Quantus-compatible ``explain_func`` for every method of the package, and a
helper that runs a Quantus metric with it.

Quantus (the optional extra ``captum-ssa[quantus]``) calls
``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)`` with
NumPy arrays, channels first, on the user's model or on deep copies of it whose
layers it re-initialises in place (MPRT). So layers are found by name in the
model at hand (a module given is turned into its name), and fits are cached per
model object and keyed by its weights.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from captum_ssa._core.inactive_state_sensitivity import InactiveStateSensitivity
from captum_ssa._core.layered_influence import LayeredInfluence
from captum_ssa._core.switched_linear_projection import SwitchedLinearProjection
from captum_ssa._utils.hooks import modules_by_name
from captum_ssa._utils.model_state import weights_fingerprint
from captum_ssa._utils.warn import warn

_FITTED_METHODS = {
    "InactiveStateSensitivity": InactiveStateSensitivity,
    "LayeredInfluence": LayeredInfluence,
}

# model -> {(method, layers, id of the fit data): (weights fingerprint, fitted method,
# or None where the fit failed on these weights)}
_FIT_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)

# module -> its name in the model it was found in: Quantus calls explain_func on deep
# copies of the model, which hold a module of the same name but not the user's module
_LAYER_NAMES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

Layer = Union[str, nn.Module]

_LAYER_REDUCTIONS = ("sum", "mean")


def require_quantus() -> Any:
    """Import Quantus, or say which extra installs it."""
    try:
        return importlib.import_module("quantus")
    except ImportError as error:
        raise ImportError(
            "this needs Quantus, the optional extra of captum-ssa: "
            "pip install 'captum-ssa[quantus]'"
        ) from error


def _weight_layers(model: nn.Module) -> list[str]:
    weighted = (nn.Linear, nn.modules.conv._ConvNd)
    return [name for name, module in model.named_modules() if isinstance(module, weighted)]


def _layer_name(model: nn.Module, layer: Layer) -> str:
    if isinstance(layer, str):
        return layer
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a module or its name, not {type(layer).__name__}")
    for name, module in model.named_modules():
        if module is layer:
            _LAYER_NAMES[layer] = name
            return name
    if layer in _LAYER_NAMES:  # the user's module, and this model a copy of theirs
        return _LAYER_NAMES[layer]
    raise ValueError(
        f"layer {type(layer).__name__} is not a module of this model, nor of a model "
        "it was copied from and explained before: give the layer's name"
    )


def _layer_names(
    model: nn.Module, method: str, layer: Union[Layer, Sequence[Layer], None]
) -> list[str]:
    if layer is not None:
        layers = [layer] if isinstance(layer, (str, nn.Module)) else list(layer)
        return [_layer_name(model, each) for each in layers]
    weight_layers = _weight_layers(model)
    if method == "SwitchedLinearProjection":
        return weight_layers[-1:]  # the output layer: its target is the class
    if method == "LayeredInfluence":
        return weight_layers[:-1]  # every hidden Linear/Conv is a candidate
    raise ValueError(f"{method} needs layer=<name of the layer to observe>")


def _fitted(
    model: nn.Module, method: str, layers: list[nn.Module], names: list[str], fit_inputs: Any
) -> Any:
    """The method fitted on ``model``'s current weights, from the cache when they are
    unchanged since the last fit; None, with a warning, where these weights cannot be
    fitted (LayeredInfluence on a model that predicts one class everywhere)."""
    if fit_inputs is None:
        raise ValueError(f"{method} needs a fit: pass fit_inputs=<reference inputs>")
    key = (method, tuple(names), id(fit_inputs))
    fingerprint = weights_fingerprint(model)
    entries = _FIT_CACHE.setdefault(model, {})
    cached = entries.get(key)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    observed: Any = layers if method == "LayeredInfluence" or len(layers) > 1 else layers[0]
    fitted: Any = _FITTED_METHODS[method](model, observed)
    device = next(model.parameters()).device
    try:
        fitted.fit(torch.as_tensor(np.asarray(fit_inputs), dtype=torch.float32, device=device))
    except ValueError as error:
        warn(f"{method}.fit on this model: {error}; quantus_explain returns NaN for it")
        fitted = None
    entries[key] = (fingerprint, fitted)
    return fitted


def quantus_explain(
    model: nn.Module,
    inputs: Union[np.ndarray, Tensor],
    targets: Union[np.ndarray, Tensor, int, None],
    method: str = "InactiveStateSensitivity",
    layer: Union[Layer, Sequence[Layer], None] = None,
    fit_inputs: Any = None,
    device: Union[str, torch.device, None] = None,
    layer_reduction: Optional[str] = None,
    **kwargs: Any,
) -> np.ndarray:
    r"""
    A Quantus ``explain_func`` for the package's methods (and Captum's by name).

    Quantus calls it as ``explain_func(model=model, inputs=x, targets=y,
    **explain_func_kwargs)``; pass ``method``, ``layer``, ``fit_inputs`` and
    any ``attribute`` keyword arguments in ``explain_func_kwargs``.

    - ``"SwitchedLinearProjection"``: the switched weights of the target logit
      (``layer`` defaults to the last Linear/Conv, the output).
    - ``"InactiveStateSensitivity"``: Ω of ``layer`` (required); class-independent,
      ``targets`` is ignored; needs ``fit_inputs`` for its frequencies, unless
      ``weighting="uniform"`` is passed.
    - ``"LayeredInfluence"``: the DeconvNet projection of the most influential
      layer among ``layer`` (default: every hidden Linear/Conv), explaining the
      target class; needs ``fit_inputs``.
    - Several layers for SLP or Insens give one map each, combined by
      ``layer_reduction`` (``"sum"`` or ``"mean"``), which is then required.
    - ``"StepwiseSensitivity"`` is refused: it returns a dependency graph of
      neurons, not an input-shaped map.
    - Any other name is looked up in ``captum.attr`` and built as ``cls(model)``
      (``"Saliency"``, ``"IntegratedGradients"``, ...).

    Fits are cached per model object and redone when its weights change (an
    in-place re-initialisation by Quantus's MPRT, a new copy), keyed by
    the weights' fingerprint (``weights_fingerprint``) and the identity of ``fit_inputs``. Where a
    fit fails on a model (LayeredInfluence on a randomised model that predicts
    one class everywhere) the result is NaN, with a warning, as in
    :func:`randomisation_check`.

    Args:
        model (nn.Module): The model (Quantus may pass a deep copy).
        inputs (numpy.ndarray or Tensor): ``(N, C, ...)``, channels first.
        targets (numpy.ndarray, Tensor or int): One class per example.
        method (str, optional): Default: ``"InactiveStateSensitivity"``.
        layer (str, nn.Module or list, optional): The layer(s), by module or
                    by name in ``model.named_modules()``. A module is turned into
                    its name in the first model it is found in, so that it also
                    names the layer in Quantus's copies of that model.
        fit_inputs (array or Tensor, optional): Reference inputs for a fit.
        device (str or torch.device, optional): Where to compute; default: the
                    model's device.
        layer_reduction (str, optional): ``"sum"`` or ``"mean"`` of the maps of
                    several layers (SLP, Insens). Default: None, one layer only.
        **kwargs: Passed to ``attribute``.

    Returns:
        numpy.ndarray shaped like ``inputs`` (float32).

    Examples::

        >>> quantus.MPRT()(model=model, x_batch=x, y_batch=y, explain_func=quantus_explain,
        ...     explain_func_kwargs={"method": "InactiveStateSensitivity", "layer": "conv2",
        ...                          "fit_inputs": x_train})
    """
    if method == "StepwiseSensitivity":
        raise ValueError(
            "StepwiseSensitivity returns a dependency graph of neurons (one per class), "
            "not an input-shaped attribution; evaluate the graph with evaluate_graph or "
            "ablation_importance, or explain through it with GraphMaskedAttribution"
        )
    if device is None:
        device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
    target: Any = None
    if targets is not None:
        target = torch.as_tensor(np.asarray(targets), device=device).long().reshape(-1)
    if method not in _FITTED_METHODS and method != "SwitchedLinearProjection":
        captum_attr = importlib.import_module("captum.attr")
        if not hasattr(captum_attr, method):
            raise ValueError(f"unknown method {method!r}")
        attributions = getattr(captum_attr, method)(model).attribute(x, target=target, **kwargs)
        return attributions.detach().cpu().float().numpy()
    names = _layer_names(model, method, layer)
    _check_reduction(method, names, layer_reduction)
    modules = modules_by_name(model)
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(f"the model has no layer named {missing}")
    layers = [modules[name] for name in names]
    if method == "SwitchedLinearProjection":
        maps = [
            SwitchedLinearProjection(model, each).attribute(x, target=target, **kwargs)
            for each in layers
        ]
    else:
        if fit_inputs is None and kwargs.get("weighting") == "uniform":
            explainer: Any = InactiveStateSensitivity(
                model, layers if len(layers) > 1 else layers[0]
            )
        else:
            explainer = _fitted(model, method, layers, names, fit_inputs)
        if explainer is None:
            return np.full(x.shape, np.nan, dtype=np.float32)
        attributions = explainer.attribute(x, target=target, **kwargs)
        maps = attributions if isinstance(attributions, list) else [attributions]
    combined = maps[0] if len(maps) == 1 else _reduce(torch.stack(maps), layer_reduction)
    return combined.detach().cpu().float().numpy()


def _check_reduction(method: str, names: list[str], layer_reduction: Optional[str]) -> None:
    if layer_reduction is not None and layer_reduction not in _LAYER_REDUCTIONS:
        raise ValueError(
            f"layer_reduction must be one of {_LAYER_REDUCTIONS}, not {layer_reduction!r}"
        )
    if method == "LayeredInfluence":
        if layer_reduction is not None:
            raise ValueError(
                "LayeredInfluence explains through the one layer it chooses among the "
                "candidates in layer=; layer_reduction does not apply"
            )
    elif len(names) > 1 and layer_reduction is None:
        raise ValueError(
            f"layer= gives {len(names)} layers {names}, but {method} gives one map per "
            "layer: pass one layer, or layer_reduction='sum' or 'mean' to combine the maps"
        )


def _reduce(maps: Tensor, layer_reduction: Optional[str]) -> Tensor:
    return maps.sum(0) if layer_reduction == "sum" else maps.mean(0)


def _to_numpy(array: Union[np.ndarray, Tensor]) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def run_quantus_metric(
    metric: Any,
    model: nn.Module,
    inputs: Union[np.ndarray, Tensor],
    targets: Union[np.ndarray, Tensor],
    explain_func_kwargs: Optional[dict[str, Any]] = None,
    **call_kwargs: Any,
) -> Any:
    r"""
    Run a Quantus metric with :func:`quantus_explain`, no glue.

    Args:
        metric: A Quantus metric instance, or its name (``"MPRT"``), built with
                    warnings and progress bars off.
        model (nn.Module): The model, in eval mode.
        inputs, targets: The examples and their classes.
        explain_func_kwargs (dict, optional): ``method``, ``layer``,
                    ``fit_inputs``, ...
        **call_kwargs: Passed to the metric call (``batch_size``, ``device``...).

    Returns:
        What the metric returns (a list of per-example scores for most).

    Examples::

        >>> run_quantus_metric("FaithfulnessCorrelation", model, x, y,
        ...     {"method": "SwitchedLinearProjection"})
    """
    quantus = require_quantus()
    if isinstance(metric, str):
        metric = getattr(quantus, metric)(disable_warnings=True, display_progressbar=False)
    return metric(
        model=model,
        x_batch=_to_numpy(inputs),
        y_batch=_to_numpy(targets),
        a_batch=None,
        explain_func=quantus_explain,
        explain_func_kwargs=dict(explain_func_kwargs or {}),
        **call_kwargs,
    )
