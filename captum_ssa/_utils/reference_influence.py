"""``LayeredInfluence``'s candidate layers, its fit over them, and the influence.

The explainer itself keeps the reference activations and labels (the tensors it
holds); :class:`LayerFit` is the rest of one fit, replaced whole by the next.
:class:`ReferenceInfluence` checks, before any explanation, that there is a fit,
that the weights have not changed since, and that the layer asked for is the one
whose reference activations were kept; then it scores that layer's units on the
queries with the monotone influence measure. Kept apart from the explainer, whose
module holds the API and its documentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.class_targets import ClassTarget, class_targets
from captum_ssa._utils.hooks import (
    check_layers_in_model,
    model_of,
    run_and_capture,
    unique_layer_names,
)
from captum_ssa._utils.influence_measure import Alpha, monotone_influence
from captum_ssa._utils.layer_choice import LayerChoice, candidate_index
from captum_ssa._utils.model_state import WeightsFingerprint, check_fit_current
from captum_ssa._utils.reference_activations import LayerReference, ReferenceReader


@dataclass(frozen=True)
class LayerFit:
    """One fit besides its tensors: the chosen candidate, the per-layer score table,
    and the fingerprint of the weights the kept reference describes."""

    chosen: int  # the candidate whose activations are kept
    scores: dict[str, float]  # layer name to score, lowest layer first
    fingerprint: Optional[WeightsFingerprint]


class ReferenceInfluence:
    """An explainer's candidate layers, its fit over them, and the influence of the
    fitted layer's units against it."""

    def __init__(
        self, forward_func: Callable[..., Any], layers: Union[Module, Sequence[Module]], method: str
    ) -> None:
        candidates = [layers] if isinstance(layers, Module) else list(layers)
        if not candidates:
            raise ValueError("layers is empty: give at least one candidate layer")
        check_layers_in_model(forward_func, candidates)
        if len({id(layer) for layer in candidates}) < len(candidates):
            raise ValueError("layers lists the same module more than once")
        self.forward_func = forward_func
        self.candidates = candidates
        self.names = unique_layer_names(model_of(forward_func), candidates)
        self.method = method  # the explainer's name, for the stale-fit error
        self.fit: Optional[LayerFit] = None

    def reader(
        self, additional_forward_args: Any, batch_size: Optional[int], show_progress: bool
    ) -> ReferenceReader:
        """Reads a reference set through the model, capturing the candidates."""
        return ReferenceReader(
            self.forward_func,
            self.candidates,
            self.names,
            additional_forward_args,
            batch_size,
            show_progress,
        )

    def fitted(self) -> LayerFit:
        """The fit, or the error that says to call ``fit`` first."""
        if self.fit is None:
            raise RuntimeError(
                "LayeredInfluence is not fitted: call fit(reference) with "
                "reference data (e.g. the training set) first"
            )
        return self.fit

    def current(self, layer: LayerChoice) -> LayerFit:
        """The fit, once it is known to be there, current, and of ``layer``."""
        fit = self.fitted()
        check_fit_current(fit.fingerprint, self.forward_func, self.method)
        names = self.names
        position = fit.chosen if layer is None else candidate_index(layer, self.candidates, names)
        if position != fit.chosen:
            raise ValueError(
                f"fit kept the reference activations of layer {names[fit.chosen]} "
                f"only, not of {names[position]}: call fit(reference, "
                f"layer={names[position]!r}) to explain with that layer"
            )
        return fit

    def layer_influence(
        self,
        fit: LayerFit,
        reference: Optional[LayerReference],
        reference_labels: Optional[Tensor],
        inputs: tuple[Tensor, ...],
        target: ClassTarget,
        additional_forward_args: Any,
        alpha: Optional[Alpha],
        points_per_chunk: Optional[int],
    ) -> tuple[Tensor, Tensor]:
        """The fitted layer's activation on ``inputs`` and the influence of its units
        against the points of ``reference`` labelled other than ``target``."""
        output, (activation,) = run_and_capture(
            self.forward_func, inputs, [self.candidates[fit.chosen]], additional_forward_args
        )
        labels = class_targets(output, target)
        assert reference is not None and reference_labels is not None
        if tuple(activation.shape[1:]) != reference.shape:
            raise ValueError(
                f"layer {self.names[fit.chosen]} outputs {tuple(activation.shape[1:])} "
                f"per example here but {reference.shape} in fit(); fit on inputs "
                "shaped like these"
            )
        device = activation.device
        queries = activation.detach().reshape(len(activation), -1)
        queries = queries.to(reference.mean.dtype) - reference.mean.to(device)
        influence = monotone_influence(
            queries,
            labels.to(device),
            [block.to(device) for block in reference.blocks],
            reference_labels.to(device),
            alpha=alpha,
            points_per_chunk=points_per_chunk,
        )
        return activation, influence.reshape(activation.shape)
