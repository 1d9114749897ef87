"""``LayeredInfluence.fit`` and what it leaves: one :class:`Fit`, replaced whole by the
next.

:func:`fit_reference` reads the reference once for a given layer or a single
candidate, or twice to choose: first the candidates' probe features, scored by
:func:`~captum_ssa._core.layered_influence.layer_choice.choose_layer`, then the
chosen layer's activations, which are all that is kept. :func:`current_fit` checks,
before any explanation, that there is a fit, that the weights have not changed
since, and that the layer asked for is the one whose reference was kept; then
:meth:`Fit.influence` scores that layer's units on the queries with the monotone
influence measure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._core.layered_influence.influence import (
    Alpha,
    SequenceLengths,
    monotone_influence,
)
from captum_ssa._core.layered_influence.labels import ClassTarget, class_targets
from captum_ssa._core.layered_influence.layer_choice import (
    CandidateLayers,
    LayerChoice,
    choose_layer,
)
from captum_ssa._core.layered_influence.reference import LayerReference, ReferenceReader
from captum_ssa._utils.batches import is_batch_stream
from captum_ssa._utils.hooks import run_and_capture
from captum_ssa._utils.model_state import (
    WeightsFingerprint,
    check_fit_current,
    untouched_model,
    weights_fingerprint,
)
from captum_ssa._utils.sequence_mask import (
    compacted,
    forward_args_with_mask,
    has_token_axis,
    padded_along_positions,
    restored,
)
from captum_ssa._utils.sequence_mask import lengths as real_token_counts


@dataclass(frozen=True)
class Fit:
    """One fit: the chosen layer, the per-layer score table, the layer's reference
    activations with the model's labels, and the fingerprint of the weights they
    describe."""

    layer: Module  # the chosen candidate, whose reference activations are kept
    name: str  # its name in the model
    scores: dict[str, float]  # layer name to score, lowest layer first
    reference: LayerReference
    fingerprint: Optional[WeightsFingerprint]

    def influence(
        self,
        forward_func: Callable[..., Any],
        inputs: tuple[Tensor, ...],
        target: ClassTarget,
        additional_forward_args: Any,
        alpha: Optional[Alpha],
        points_per_chunk: Optional[int],
        mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """The layer's activation on ``inputs`` and the influence of its units against
        the reference points labelled other than ``target``; ``mask`` is the inputs'
        mask (passed to the model first among ``additional_forward_args``)."""
        output, (activation,) = run_and_capture(
            forward_func,
            inputs,
            [self.layer],
            forward_args_with_mask(mask, additional_forward_args),
        )
        labels = class_targets(output, target)
        reference = self.reference
        sequences = reference.lengths is not None or has_token_axis(activation, mask)
        if sequences and activation.dim() >= 3:
            if tuple(activation.shape[2:]) != reference.shape[1:]:
                raise ValueError(
                    f"layer {self.name} outputs {tuple(activation.shape[1:])} per example "
                    f"here but {reference.shape} (positions, ...) in fit(); fit on token "
                    "sequences of these features"
                )
            return activation, self._sequence_influence(
                activation, mask, labels, alpha, points_per_chunk
            )
        if tuple(activation.shape[1:]) != reference.shape:
            raise ValueError(
                f"layer {self.name} outputs {tuple(activation.shape[1:])} "
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
            reference.labels.to(device),
            alpha=alpha,
            points_per_chunk=points_per_chunk,
        )
        return activation, influence.reshape(activation.shape)

    def _sequence_influence(
        self,
        activation: Tensor,
        mask: Optional[Tensor],
        labels: Tensor,
        alpha: Optional[Alpha],
        points_per_chunk: Optional[int],
    ) -> Tensor:
        """The influence on token sequences: each query against each reference point
        on the positions both have, counted among the real tokens (the pads removed;
        without a mask every position of the query is a real token). Zero at the
        pads."""
        reference = self.reference
        device = activation.device
        if mask is None or not has_token_axis(activation, mask):
            mask = torch.ones(activation.shape[:2], dtype=torch.bool, device=device)
        positions, width = activation.shape[1], activation[0, 0].numel()
        queries = compacted(activation.detach(), mask).reshape(len(activation), positions, width)
        queries = queries.to(reference.mean.dtype)
        mean = padded_along_positions(reference.mean.reshape(reference.shape[0], width), positions)
        real = torch.arange(positions, device=device) < real_token_counts(mask)[:, None]
        queries = (queries - mean[:positions].to(device) * real[:, :, None]).reshape(
            len(activation), -1
        )
        reference_lengths = reference.lengths
        if reference_lengths is None:  # fitted without masks: every position is a token
            reference_lengths = torch.full((len(reference.labels),), reference.shape[0])
        influence = monotone_influence(
            queries,
            labels.to(device),
            [block.to(device) for block in reference.blocks],
            reference.labels.to(device),
            alpha=alpha,
            points_per_chunk=points_per_chunk,
            lengths=SequenceLengths(
                real_token_counts(mask).to(device), reference_lengths.to(device), width
            ),
        )
        return restored(influence.reshape(activation.shape), mask)


def fit_reference(
    forward_func: Callable[..., Any],
    candidates: CandidateLayers,
    reference: Any,
    *,
    additional_forward_args: Any,
    batch_size: Optional[int],
    show_progress: bool,
    criterion: str,
    tolerance: float,
    given: Optional[int],
    sample_points: Optional[int],
    mask: Optional[Tensor] = None,
    owner: Any = None,
) -> Fit:
    """The fit of ``reference``: the given candidate, or the one ``criterion``
    chooses (no score table when ``given`` or a single candidate leaves no choice)."""
    reader = ReferenceReader(
        forward_func,
        candidates.layers,
        candidates.names,
        additional_forward_args,
        batch_size,
        show_progress,
        mask,
        owner,
    )
    table: dict[str, float] = {}
    rows_per_rank: Optional[list[int]] = None
    with untouched_model(forward_func), torch.no_grad():
        if given is not None or len(candidates.layers) == 1:
            chosen = 0 if given is None else given
        else:
            check_readable_twice(reference)
            probe = reader.probe(reference, criterion, sample_points)
            check_two_classes(probe.labels)
            chosen, table = choose_layer(probe, candidates.names, criterion, tolerance)
            rows_per_rank = probe.rows_per_rank
            del probe  # its features and subsample are not kept past the choice
        kept = reader.keep(reference, chosen, rows_per_rank)
    check_two_classes(kept.labels)
    return Fit(
        layer=candidates.layers[chosen],
        name=candidates.names[chosen],
        scores=table,
        reference=kept,
        # taken last and outside untouched_model: what the kept reference describes
        fingerprint=weights_fingerprint(forward_func),
    )


def current_fit(
    fit: Optional[Fit],
    forward_func: Callable[..., Any],
    candidates: CandidateLayers,
    layer: LayerChoice,
    method: str,
) -> Fit:
    """``fit``, once it is known to be there, current, and of ``layer``."""
    fit = fitted(fit)
    check_fit_current(fit.fingerprint, forward_func, method)
    name = fit.name if layer is None else candidates.names[candidates.index(layer)]
    if name != fit.name:
        raise ValueError(
            f"fit kept the reference activations of layer {fit.name} "
            f"only, not of {name}: call fit(reference, "
            f"layer={name!r}) to explain with that layer"
        )
    return fit


def fitted(fit: Optional[Fit]) -> Fit:
    """``fit``, or the error that says to call ``fit`` first."""
    if fit is None:
        raise RuntimeError(
            "LayeredInfluence is not fitted: call fit(reference) with "
            "reference data (e.g. the training set) first"
        )
    return fit


def check_readable_twice(reference: Any) -> None:
    """Choosing the layer reads the reference twice: an iterator cannot be."""
    if is_batch_stream(reference) and iter(reference) is reference:
        raise ValueError(
            "reference is an iterator, which can be read only once, but fit reads the "
            "reference twice when it chooses the layer (the candidates' probe features, "
            "then the chosen layer's activations): pass a DataLoader or a list of "
            "batches, or give layer= to read it once"
        )


def check_two_classes(labels: Tensor) -> None:
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError(
            f"the model predicts one class ({classes.tolist()}) for every "
            "reference point: the influence measure compares each point with "
            "differently-labelled points, so the reference set needs at "
            "least two predicted classes"
        )
