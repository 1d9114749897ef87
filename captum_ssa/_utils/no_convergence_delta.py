"""The Captum contract of a method without a convergence delta.

Captum's :class:`~captum.attr.GradientAttribution` defines
``compute_convergence_delta`` as the sum of the attributions minus the change of
the model output: a completeness check that means something only for methods
whose attributions decompose that change (Integrated Gradients, DeepLift, ...).
A method that subclasses ``GradientAttribution`` for its input-shaped results,
but whose attributions decompose nothing, inherits that computation and would
return numbers that look like an error of the method. Such a method says
``has_convergence_delta() == False`` and raises instead, as Captum's
:class:`~captum.attr.Attribution` does for a method without one.
"""

from __future__ import annotations

from typing import Any, NoReturn


class NoConvergenceDelta:
    """Mixin, listed before Captum's base classes: no convergence delta, and a
    clear error from ``compute_convergence_delta``."""

    def has_convergence_delta(self) -> bool:
        return False

    def compute_convergence_delta(self, *args: Any, **kwargs: Any) -> NoReturn:
        name = type(self).__name__
        raise NotImplementedError(
            f"{name} has no convergence delta (has_convergence_delta() is False): its "
            "attributions do not decompose a change of the model output, so the sum of "
            "the attributions minus that change, which Captum's GradientAttribution "
            f"computes, measures nothing about {name}"
        )
