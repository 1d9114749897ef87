"""SSA over a dataset: forward passes over a stream of batches, Steps I-II per batch.

A tensor is a stream of one batch. Step II is a running sum per layer pair
(:class:`RunningAggregate`), so memory is flat in the dataset size, and under
``torch.distributed`` each rank streams its shard and the sums are all-reduced
before Step IV, which every rank then takes on the same numbers.

Step IV of a pair decides the upper neurons of the pair below, and needs the
whole dataset. So a graph takes either

- ``"per_pair"``: one pass over the data per layer pair, from the top, with
  relevances only for the upper neurons kept above (the forward pass stops at
  the pair's upper layer). ``L - 1`` forward passes per example for ``L``
  layers, but backward passes only for the kept neurons; or
- ``"single"``: one pass with every pair, relevances for *every* upper neuron
  of the lower pairs, thresholded top-down afterwards. One forward pass, but
  the relevance of every neuron, kept or not.

For the gradient relevances a backward pass through a segment costs about as
much as the forward pass through it, and a pair has tens to hundreds of upper
neurons but only one forward pass to save, so ``"per_pair"`` is cheaper
whenever Step IV drops any neuron at all; the relevances that take no
gradient (activations, weights) cost a fraction of a forward pass whatever
the number of neurons, so there one pass wins. A one-shot iterator can only
be read once and always gets ``"single"``; a single in-memory batch keeps its
forward pass between pairs (no extra cost). :func:`choose_passes` is the rule.

Every temporary is bounded by the memory budget (``memory_budget.py``): the
upper neurons per relevance call (their Step I rows, the seeds below a
Linear/Conv and batched gradients) and the examples per forward pass (one
upper neuron's gradient on the lower layer, and what is computed from it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils import segment
from captum_ssa._utils.batches import Batch
from captum_ssa._utils.hooks import observe_layer_calls, run_and_capture
from captum_ssa._utils.memory_budget import rows_within_budget
from captum_ssa._utils.ssa_steps import RunningAggregate, relevance_tensor
from captum_ssa._utils.streaming import pieces
from captum_ssa._utils.weighted_connection import record_weighted_calls
from captum_ssa.relevance import BUILT_IN, LayerPair, RelevanceFunction

PASSES = ("auto", "per_pair", "single")

# Relevances computed without gradients: their cost does not grow with the
# number of upper neurons by a backward pass each.
GRADIENT_FREE = frozenset(
    BUILT_IN[name]
    for name in (
        "activation",
        "weight",
        "weight_activation",
        "weight_abs",
        "activations_abs",
        "weight_act_abs",
    )
)

# Copies, per upper neuron and example, of Step I's (M, N, K) rows alive at
# once: the rows, Tukey's sorted copy, its fences and its outlier indicator.
RELEVANCE_ROW_COPIES = 4
# Copies of a seed below the upper layer alive at once: the seed, its
# absolute value and the reordered copy a batched product makes (plus the map
# of the upper output it is computed from).
SEED_COPIES = 3
# Copies of the lower output that one upper neuron's relevance holds per
# example: its gradient, the gradient times an activation, its absolute
# value, and the segment's own intermediate gradients.
GRADIENT_COPIES = 4


@dataclass
class Capture:
    """One forward pass over some examples: the listed layers' outputs (neurons at
    dim 1), the observed inputs of the upper layers, the Linear/Conv calls."""

    inputs: tuple[Tensor, ...]
    model_output: Any
    outputs: list[Tensor]
    order: list[int]
    upper_inputs: dict[int, Tensor]
    weighted_calls: dict[int, Any]


@dataclass
class Setting:
    """What stays fixed over one call: the model, its layers and the Step I options."""

    forward_func: Callable[..., Any]
    layers: list[Module]
    layer_names: list[str]
    neuron_dim: Optional[int]
    additional_forward_args: Any
    modules: list[Module]
    keep_input: list[bool]
    relevance: RelevanceFunction
    absolute: bool
    aggregation: str
    upper_neurons_per_chunk: Optional[int]
    # known after the first forward pass: each layer's neuron axis, neurons and dtype
    axes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    dtypes: list[torch.dtype] = field(default_factory=list)

    def capture(self, inputs: tuple[Tensor, ...], depth: Optional[int] = None) -> Capture:
        """Run the model on ``inputs``; with ``depth``, only up to layer ``depth - 1``."""
        layers = self.layers if depth is None else self.layers[:depth]
        # the weighted calls' hooks first, so that they see each module's own output
        with (
            record_weighted_calls(self.modules) as weighted_calls,
            observe_layer_calls(layers, self.keep_input[: len(layers)]) as calls,
        ):
            model_output, outputs = run_and_capture(
                self.forward_func,
                inputs,
                layers,
                self.additional_forward_args,
                stop_after_last=depth is not None,
                neuron_dim=self.neuron_dim,
            )
        return Capture(inputs, model_output, outputs, calls.order, calls.inputs, weighted_calls)

    def pair(self, capture: Capture, upper: int) -> LayerPair:
        """Layers ``upper - 1`` and ``upper`` as Step I sees them on ``capture``."""
        return LayerPair(
            lower_name=self.layer_names[upper - 1],
            upper_name=self.layer_names[upper],
            lower_layer=self.layers[upper - 1],
            upper_layer=self.layers[upper],
            lower_output=capture.outputs[upper - 1],
            upper_output=capture.outputs[upper],
            # the seed below the upper layer assumes its neurons along dim 1
            upper_input=capture.upper_inputs.get(upper) if self.axes[upper] == 1 else None,
            forward_func=self.forward_func,
            inputs=capture.inputs,
            additional_forward_args=self.additional_forward_args,
            neuron_dim=self.neuron_dim,
            weighted_calls=capture.weighted_calls,
        )

    def accumulate(
        self,
        pair: LayerPair,
        neurons: Tensor,
        aggregate: RunningAggregate,
        datapoints: Optional[Tensor] = None,
    ) -> None:
        """Steps I and II of upper ``neurons`` on one capture, chunked by the budget."""
        chunk = self.upper_neurons_per_chunk or upper_neurons_within_budget(pair)
        for start in range(0, len(neurons), chunk):
            part = neurons[start : start + chunk]
            omega = relevance_tensor(pair, part, self.relevance, self.absolute)
            part_datapoints = None if datapoints is None else datapoints[start : start + chunk]
            aggregate.add(part, omega, part_datapoints)
            del omega


def upper_neurons_within_budget(pair: LayerPair) -> int:
    """How many upper neurons' Step I temporaries fit in the memory budget together."""
    lower, upper = pair.lower_output, pair.upper_output
    item = lower.element_size()
    per_neuron = lower.shape[0] * lower.shape[1] * item * RELEVANCE_ROW_COPIES
    if pair.upper_input is not None:  # a seed below the layer, the same for every example
        per_neuron += (upper[0].numel() + SEED_COPIES * pair.upper_input[0].numel()) * item
    if lower.numel() <= segment.VECTORISED_GRADIENT_ELEMENTS:  # several per backward pass
        per_neuron += (upper.numel() + 2 * lower.numel()) * item
    return rows_within_budget(per_neuron)


def examples_within_budget(outputs: Sequence[Tensor]) -> int:
    """How many examples one forward pass may hold so that a single upper neuron's
    gradient temporaries, on the widest listed lower layer, fit in the budget."""
    per_example = max(
        output[0].numel() * output.element_size() * GRADIENT_COPIES for output in outputs[:-1]
    )
    return rows_within_budget(per_example)


def choose_passes(passes: str, relevance: RelevanceFunction, data: Any, layers: int) -> str:
    """``"per_pair"`` or ``"single"`` for ``passes="auto"`` (see the module docstring)."""
    if passes != "auto":
        return passes
    one_shot = isinstance(data, Iterator)
    if one_shot or (layers > 2 and relevance in GRADIENT_FREE):
        return "single"
    return "per_pair"


def row_slices(batch: Batch, label: Optional[int], rows: int) -> Iterator[Batch]:
    """The examples of ``batch`` (of class ``label`` only, if given), ``rows`` at a time,
    as fresh leaf inputs."""
    inputs, labels = batch.inputs, batch.labels
    if label is not None:
        if labels is None:
            raise ValueError(
                "class_graphs over a stream needs (inputs, labels) batches; a batch came "
                "without labels"
            )
        members = (labels == label).nonzero().flatten()
        if not len(members):
            return
        if len(members) < len(labels):
            inputs = tuple(t.detach()[members.to(t.device)].requires_grad_() for t in inputs)
            labels = labels[members]
    whole = Batch(inputs, labels)
    if rows >= whole.size:
        yield whole
        return
    for piece in pieces(whole, rows):
        yield Batch(tuple(t.detach().requires_grad_() for t in piece.inputs), piece.labels)
