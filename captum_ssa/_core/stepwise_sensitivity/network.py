"""The network as SSA reads it: the listed layers, one forward pass, the layer checks.

A :class:`Network` is what stays fixed over one call (the model, its listed
layers and their names, the neuron axis, the extra forward arguments); what
only a forward pass tells (each layer's neuron axis, number of neurons and
dtype) is filled in by :meth:`Network.check_first_pass`, which also checks
the layers: listed in the order the forward pass runs them, each computed
from the one below it. :meth:`Network.capture` runs the model once and keeps
what Step I reads (a :class:`Capture`); :meth:`Network.pair` hands two
consecutive layers of a capture to a relevance function as a ``LayerPair``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import Module

from captum_ssa._core.stepwise_sensitivity.relevance import LayerPair
from captum_ssa._core.stepwise_sensitivity.segment import (
    depends_on,
    is_weighted_layer,
    layer_position_weights,
)
from captum_ssa._core.stepwise_sensitivity.weighted_connection import record_weighted_calls
from captum_ssa._utils.hooks import (
    claimed_modules,
    model_of,
    neuron_axis,
    observe_layer_calls,
    run_and_capture,
)
from captum_ssa._utils.sequence_mask import forward_args_with_mask
from captum_ssa._utils.warn import warn

# Modules whose 3-D outputs are (N, channels, length): dim 1 holds their neurons.
_CHANNEL_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


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
    mask: Optional[Tensor] = None


@dataclass
class Network:
    """The model and its listed layers, as one SSA call reads them."""

    forward_func: Callable[..., Any]
    layers: list[Module]
    layer_names: list[str]
    neuron_dim: Optional[int]
    additional_forward_args: Any
    # known after the first forward pass: each layer's neuron axis, neurons and dtype
    axes: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    dtypes: list[torch.dtype] = field(default_factory=list)

    def __post_init__(self) -> None:
        model = model_of(self.forward_func)
        self.modules = list(model.modules()) if model is not None else self.layers
        # The seed below a layer stands for the layer's own weights: only valid
        # when no hook of the user's changes what the layer outputs. Read under the
        # layers' claim: another thread's capture holds hooks of ours on them only
        # while it holds the claim, and would otherwise change this call's path
        # (the seeded and the unseeded gradients differ in the last bits).
        with claimed_modules(self.layers):
            self.keep_input = [
                position > 0
                and is_weighted_layer(layer)
                and not (layer._forward_hooks or layer._forward_pre_hooks)
                for position, layer in enumerate(self.layers)
            ]

    def capture(
        self, inputs: tuple[Tensor, ...], mask: Optional[Tensor] = None, depth: Optional[int] = None
    ) -> Capture:
        """Run the model on ``inputs`` (with their ``mask``, passed to the model first
        among the additional forward arguments); with ``depth``, only up to layer
        ``depth - 1``."""
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
                forward_args_with_mask(mask, self.additional_forward_args),
                stop_after_last=depth is not None,
                neuron_dim=self.neuron_dim,
                # gradients are only taken between the layers (and token ids into a
                # frozen model leave the layer outputs outside autograd)
                graph_from_first_layer=True,
            )
        return Capture(
            inputs, model_output, outputs, calls.order, calls.inputs, weighted_calls, mask
        )

    def check_first_pass(self, capture: Capture) -> tuple[int, ...]:
        """Check the layers on the first forward pass, fix their neuron axes, sizes and
        dtypes, and return the top layer's own output shape."""
        check_forward_order(capture.order, self.layer_names, self.layers)
        self.axes = [
            neuron_axis(self.neuron_dim, output.dim(), name)
            for output, name in zip(capture.outputs, self.layer_names)
        ]
        self.sizes = [output.shape[1] for output in capture.outputs]
        self.dtypes = [output.dtype for output in capture.outputs]
        if self.neuron_dim is None:
            suspects = sequence_axis_layers(self.modules, self.layers, self.layer_names, capture)
            if suspects:
                warn(
                    f"SSA takes dim 1 of a layer output as its neuron axis, but "
                    f"{suspects} output 3-D tensors and are not convolutions: dim 1 is "
                    "probably a sequence (token) axis there. Pass neuron_dim=-1 to "
                    "StepwiseSensitivity for the features, or neuron_dim=1 to keep "
                    "dim 1 and silence this warning."
                )
        check_dependencies(capture.outputs, self.layer_names)
        for output, name in zip(capture.outputs, self.layer_names):
            # a layer whose neurons lie along the mask's token axis is an error
            layer_position_weights(output, self.neuron_dim, capture.mask, name)
        return tuple(capture.outputs[-1].movedim(1, self.axes[-1]).shape)

    def pair(self, capture: Capture, upper: int) -> LayerPair:
        """Layers ``upper - 1`` and ``upper`` as Step I sees them on ``capture``."""
        lower_weights, upper_weights = (
            layer_position_weights(
                capture.outputs[position], self.neuron_dim, capture.mask, self.layer_names[position]
            )
            for position in (upper - 1, upper)
        )
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
            additional_forward_args=forward_args_with_mask(
                capture.mask, self.additional_forward_args
            ),
            neuron_dim=self.neuron_dim,
            weighted_calls=capture.weighted_calls,
            mask=capture.mask,
            lower_weights=lower_weights,
            upper_weights=upper_weights,
        )


def check_forward_order(order: list[int], names: list[str], layers: list[Module]) -> None:
    if order != sorted(order):
        ran = [names[position] for position in order]
        nested = [
            (names[outer], names[inner])
            for outer, container in enumerate(layers)
            for inner, layer in enumerate(layers)
            if outer != inner and any(module is layer for module in container.modules())
        ]
        hint = "".join(
            f"; {outer!r} contains {inner!r}, so it starts running first: list layers along "
            "one path of the computation, not a block and a module inside it"
            for outer, inner in nested[:1]
        )
        raise ValueError(
            f"layers must be listed in the order the forward pass runs them, lowest "
            f"first: got {names}, but the model runs them as {ran}{hint}"
        )


def check_dependencies(outputs: list[Tensor], names: list[str]) -> None:
    """Each listed layer must be computed from the one listed below it."""
    for upper in range(len(outputs) - 1, 0, -1):
        if not depends_on(outputs[upper], outputs[upper - 1]):
            raise ValueError(
                f"the output of {names[upper]!r} does not depend on the output of "
                f"{names[upper - 1]!r} (one is a module inside the other, or they lie on "
                "parallel branches), so every relevance between them would be zero; list "
                "layers along one path of the computation, each computed from the one "
                "listed before it"
            )


def sequence_axis_layers(
    modules: list[Module], layers: list[Module], names: list[str], capture: Capture
) -> list[str]:
    """Listed layers whose 3-D output is probably (N, sequence, features)."""
    has_convolution = any(isinstance(module, nn.modules.conv._ConvNd) for module in modules)
    suspects = []
    for layer, name, output in zip(layers, names, capture.outputs):
        if output.dim() != 3 or isinstance(layer, _CHANNEL_FIRST):
            continue
        # an activation after a Conv1d is (N, C, L) too; only a conv-free model tells
        parameter_free = next(layer.parameters(), None) is None
        if not (parameter_free and has_convolution):
            suspects.append(name)
    return suspects
