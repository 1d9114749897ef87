"""How the harness turns an explainer specification into attributions, on the
user's model or on a copy of it.

Three kinds of specification are accepted wherever the harness takes an
explainer:

- a Captum ``Attribution`` object (Captum's or ours), used as it is; where a
  model copy is needed (the randomisation check) the object is deep-copied
  *together with* the model, so that its layers point into the copy;
- an :class:`Explainer`: a factory ``model -> attribution object`` with
  optional ``attribute`` keyword arguments and an optional ``fit`` hook, the
  explicit way to rebuild (and re-fit) a method on any model;
- a plain callable ``(inputs, target) -> attributions`` for anything else; it
  cannot be moved to another model, so model-copy metrics report NaN for it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from captum.attr import Attribution
from torch import Tensor, nn

AttributeFunction = Callable[..., Tensor]


@dataclass
class Explainer:
    r"""
    An attribution method that can be built on any model.

    Args:
        build (Callable): ``model -> attribution object`` (an object with an
                    ``attribute(inputs, target=...)`` method), e.g.
                    ``lambda m: IntegratedGradients(m)`` or
                    ``lambda m: InactiveStateSensitivity(m, m.conv2)``. A
                    Captum attribution class is accepted too
                    (``Explainer(Saliency)``).
        fit (Callable, optional): ``(attribution object, model) -> None``, called
                    after every build, for methods that need a fit on reference
                    data (Insens with ``weighting="frequency"``,
                    LayeredInfluence). Default: None.
        attribute_kwargs (dict, optional): extra keyword arguments of
                    ``attribute`` (e.g. ``{"n_steps": 32}``). Default: none.

    Examples::

        >>> Explainer(
        ...     lambda m: LayeredInfluence(m, [m.conv2, m.fc1]),
        ...     fit=lambda method, _model: method.fit(x_train),
        ... )
    """

    build: Callable[[nn.Module], Any]
    fit: Optional[Callable[[Any, nn.Module], None]] = None
    attribute_kwargs: dict[str, Any] = field(default_factory=dict)

    def on(self, model: nn.Module) -> AttributeFunction:
        """The attribution function of the method built (and fitted) on ``model``."""
        method = self.build(model)
        if self.fit is not None:
            try:
                self.fit(method, model)
            except ValueError as error:
                raise RefitError(f"the fit hook failed on this model: {error}") from error
        return bind(method, self.attribute_kwargs)


class RefitError(RuntimeError):
    """A fitted method cannot be fitted again on a changed model (e.g.
    LayeredInfluence on a randomised model that predicts one class everywhere)."""


ExplainerSpec = Union[Attribution, Explainer, AttributeFunction]


def bind(method: Any, attribute_kwargs: Optional[Mapping[str, Any]] = None) -> AttributeFunction:
    """``(inputs, target) -> Tensor`` calling ``method.attribute`` with fixed keyword
    arguments, or ``method`` itself when it is a plain callable."""
    kwargs = dict(attribute_kwargs or {})
    attribute = getattr(method, "attribute", method)

    def explain(inputs: Tensor, target: Any = None, **extra: Any) -> Tensor:
        # Captum's sensitivity_max passes further keyword arguments through
        result = attribute(inputs, target=target, **{**kwargs, **extra})
        # a method observing several layers (Insens with a list) answers with one
        # map per layer; the harness compares one map per method: the first
        return result[0] if isinstance(result, list) else result

    return explain


def explain_function(
    spec: ExplainerSpec, model: nn.Module, attribute_kwargs: Optional[Mapping[str, Any]] = None
) -> AttributeFunction:
    """The attribution function of ``spec`` on the user's ``model``."""
    if isinstance(spec, Explainer):
        spec = copy.copy(spec)
        spec.attribute_kwargs = {**spec.attribute_kwargs, **(attribute_kwargs or {})}
        return spec.on(model)
    return bind(spec, attribute_kwargs)


def _copy_memo(model: nn.Module, other: nn.Module) -> dict[int, Any]:
    """A deepcopy memo mapping every module, parameter and buffer of ``model`` to
    its namesake in ``other`` (a copy of ``model``, e.g. Quantus's)."""
    memo: dict[int, Any] = {}
    for pairs, other_pairs in (
        (model.named_modules(), dict(other.named_modules())),
        (model.named_parameters(), dict(other.named_parameters())),
        (model.named_buffers(), dict(other.named_buffers())),
    ):
        for name, item in pairs:
            if name not in other_pairs:
                raise ValueError(f"the other model has no {name!r}: is it a copy of the model?")
            memo[id(item)] = other_pairs[name]
    return memo


def method_on(
    spec: ExplainerSpec,
    model: nn.Module,
    other: nn.Module,
    attribute_kwargs: Optional[Mapping[str, Any]] = None,
    fit_inputs: Any = None,
) -> Optional[AttributeFunction]:
    r"""
    The method of ``spec`` (given for ``model``) rebuilt on ``other``, a copy
    of ``model`` with the same module names (possibly other weights).

    An ``Attribution`` object is deep-copied with a memo that maps each of
    ``model``'s modules, parameters and buffers to ``other``'s, so everything
    it refers to (its ``forward_func``, its layers) becomes ``other``'s; if it
    has a ``fit`` method it is re-fitted on ``fit_inputs`` (a fit describes the
    old weights). An :class:`Explainer` is built on ``other``. Returns None for
    a plain callable, which cannot be moved to another model.
    """
    if isinstance(spec, Explainer):
        return explain_function(spec, other, attribute_kwargs)
    if not isinstance(spec, Attribution):
        return None
    method = copy.deepcopy(spec, _copy_memo(model, other))
    if hasattr(method, "fit"):
        if fit_inputs is None:
            raise ValueError(
                f"{type(method).__name__} needs a new fit on the changed model: pass "
                "fit_inputs=reference data, or give an Explainer with a fit hook"
            )
        try:
            method.fit(fit_inputs)
        except ValueError as error:
            raise RefitError(
                f"{type(method).__name__}.fit on the changed model: {error}"
            ) from error
    return bind(method, attribute_kwargs)


def rebuild_on_copy(
    spec: ExplainerSpec,
    model: nn.Module,
    randomise: Callable[[nn.Module], None],
    attribute_kwargs: Optional[Mapping[str, Any]] = None,
    fit_inputs: Any = None,
) -> Optional[AttributeFunction]:
    """:func:`method_on` a deep copy of ``model`` changed by ``randomise``; the
    user's model is never touched."""
    if not isinstance(spec, (Explainer, Attribution)):
        return None
    model_copy = copy.deepcopy(model)
    randomise(model_copy)
    return method_on(spec, model, model_copy, attribute_kwargs, fit_inputs)
