r"""Insens's sum :math:`\Omega_l(x) = \sum_i c_i\, w_i`, what
``InactiveStateSensitivity.attribute`` computes.

:func:`omega` runs the model to its layers once, takes every neuron's switched
weight norm :math:`\lVert w_i \rVert^2` from the chunked Jacobian, turns it into
the neuron's coefficient :math:`c_i` (its weight times :math:`v_i / \lVert w_i
\rVert^2` for the neurons in the sum, zero elsewhere: the active ones, the pads of
a mask, the neurons a selector leaves out), averages over the selected neurons for
the ``"uniform"`` weighting, and sums :math:`c_i w_i` with one vector-Jacobian
product per layer. It warns where a layer looks taken after its activation.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.inactive_state_sensitivity.frequency import frequency_of_positions
from captum_ssa._utils.embedding_layer import AttributedInputs
from captum_ssa._utils.hooks import layer_function, layer_name, run_and_capture
from captum_ssa._utils.jacobian import JacobianPlan, jacobian_row_norms, vector_jacobian_product
from captum_ssa._utils.linearity import warn_if_not_piecewise_linear
from captum_ssa._utils.sequence_mask import token_flags
from captum_ssa._utils.validation import IndexSelector, selected_units
from captum_ssa._utils.warn import warn

WEIGHTINGS = ("frequency", "uniform")


@dataclass
class WarnedOnce:
    """The warnings an explainer gives once, and whether each was given: the
    explainer owns one, :func:`omega` marks a warning given as it gives it (so an
    error later in the same call does not repeat it)."""

    not_piecewise_linear: bool = False
    no_negative_outputs: bool = False


def omega(
    attributed: AttributedInputs,
    layers: list[Module],
    forward_args: Any,
    model: Optional[Module],
    frequencies: Optional[list[Tensor]],
    examples_per_position: Optional[list[Optional[Tensor]]],
    *,
    weighting: str,
    include_active: bool,
    pool_layers: bool,
    jacobian_mode: str,
    jacobian_vectors_per_chunk: Optional[int],
    show_progress: bool,
    neuron_selector: Optional[IndexSelector],
    mask: Optional[Tensor],
    warned: WarnedOnce,
    method: str,
    jacobian_plans: Optional[dict[Hashable, JacobianPlan]] = None,
) -> list[tuple[Tensor, ...]]:
    r""":math:`\Omega_l` of each of ``layers`` (``model``'s modules) with respect to
    ``attributed.leaves``, not yet detached, or one pooled over the layers; weighted
    by the fitted ``frequencies`` (None for ``"uniform"``). Call it where the model
    is held, inside ``untouched_model``. ``warned`` records the once-only warnings,
    ``method`` names the explainer in them; ``jacobian_plans`` keeps, per layer
    and shape, which Jacobian strategy ``"auto"`` measured fastest."""
    prepared = attributed.leaves
    _, outputs = run_and_capture(
        attributed.forward_func,
        prepared,
        layers,
        forward_args,
    )
    coefficients = []
    for position, (layer, output) in enumerate(zip(layers, outputs)):
        if not warned.not_piecewise_linear:
            warned.not_piecewise_linear = warn_if_not_piecewise_linear(method, output, prepared)
        if not warned.no_negative_outputs:
            warned.no_negative_outputs = _warn_if_after_activation(output, layer_name(model, layer))
        squared_norms = jacobian_row_norms(
            output,
            layer_function(attributed.forward_func, layer, forward_args),
            prepared,
            chunk_size=jacobian_vectors_per_chunk,
            mode=jacobian_mode,
            show_progress=show_progress,
            plans=jacobian_plans,
            plan_key=position,
        ).reshape(output.shape)
        frequency = None
        if frequencies is not None:
            by_position = examples_per_position or [None] * len(frequencies)
            frequency = frequency_of_positions(
                frequencies[position], by_position[position] is not None, output, mask
            )
        coefficient = _neuron_coefficients(
            output.detach(), squared_norms, frequency, include_active
        )
        real_tokens = token_flags(output, mask)
        if real_tokens is not None:  # pads are no neurons
            coefficient = coefficient * real_tokens
        if neuron_selector is not None:
            units = selected_units(output, neuron_selector, method)
            coefficient = coefficient * units
        coefficients.append(coefficient)
    if weighting == "uniform":
        coefficients = _average_over_selected(
            coefficients, outputs, include_active, pool_layers, mask
        )
    per_layer = [
        vector_jacobian_product(output, prepared, coefficient)
        for output, coefficient in zip(outputs, coefficients)
    ]
    if pool_layers:
        pooled = tuple(torch.stack(parts).sum(0) for parts in zip(*per_layer))
        per_layer = [pooled]
    return per_layer


def _warn_if_after_activation(output: Tensor, layer: str) -> bool:
    """Warn, and say so, when ``output`` looks taken after a ReLU-like activation:
    exact zeros and no negative value, so every inactive unit (v <= 0) is 0 and
    contributes nothing to Omega."""
    if bool((output < 0).any()) or not bool((output == 0).any()):
        return False
    warn(
        f"the output of layer {layer} has exact zeros and no negative value, as after "
        "a ReLU: its inactive units are exactly 0, so their omega_i = (v_i / ||w_i||^2) "
        "w_i vanish and Insens is zero (only active units count, with "
        "include_active=True). Insens needs the pre-activations: pass the layer before "
        "the activation (the Linear or Conv whose output the ReLU takes)."
    )
    return True


def _neuron_coefficients(
    activity: Tensor,
    squared_norms: Tensor,
    frequency: Optional[Tensor],
    include_active: bool,
) -> Tensor:
    """Per neuron, the factor of ``w_i`` in Omega: weight * v_i / ||w_i||^2.

    Zero for neurons outside the sum (active ones, unless included) and for
    neurons with ``w_i = 0``, whose centre is undefined.
    """
    if frequency is not None and frequency.shape not in (activity.shape[1:], activity.shape):
        raise ValueError(
            f"the layer output is shaped {tuple(activity.shape[1:])} per example but "
            f"fit() saw {tuple(frequency.shape)}; fit on inputs shaped like these"
        )
    selected = torch.ones_like(activity, dtype=torch.bool) if include_active else activity <= 0
    selected = selected & (squared_norms > 0)
    safe_norms = torch.where(squared_norms > 0, squared_norms, torch.ones_like(squared_norms))
    weight = 1.0 if frequency is None else frequency.to(activity)
    return torch.where(selected, weight * activity / safe_norms, torch.zeros_like(activity))


def _average_over_selected(
    coefficients: list[Tensor],
    outputs: list[Tensor],
    include_active: bool,
    pool_layers: bool,
    mask: Optional[Tensor] = None,
) -> list[Tensor]:
    """Divide by |I| per example: the neurons in the sum (at the real tokens of a
    mask), per layer or pooled."""
    counts = []
    for o in outputs:
        selected = torch.ones_like(o, dtype=torch.bool) if include_active else o <= 0
        real_tokens = token_flags(o, mask)
        if real_tokens is not None:
            selected = selected & real_tokens
        counts.append(selected.reshape(o.shape[0], -1).sum(1))
    if pool_layers:
        total = torch.stack(counts).sum(0)
        counts = [total] * len(counts)
    return [
        c / n.clamp(min=1).reshape(-1, *([1] * (c.dim() - 1))).to(c)
        for c, n in zip(coefficients, counts)
    ]
