"""What SSA reads on the first forward pass: the layer checks, the neuron axes and
where each graph starts.

The layers' order, dependencies and output shapes, and the top layer's
neurons that ``target``, ``top_neurons`` or the classes of ``class_graphs``
name, are only known once the model has run; ``build_graphs`` calls the
setup that these two functions make up on its first forward pass.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch

from captum_ssa._utils.hooks import neuron_axis
from captum_ssa._utils.ssa_checks import (
    NeuronSet,
    Target,
    check_dependencies,
    check_forward_order,
    check_target_on_output,
    sequence_axis_layers,
    starting_neurons,
)
from captum_ssa._utils.ssa_passes import Start
from captum_ssa._utils.ssa_streaming import Capture, Setting
from captum_ssa._utils.warn import warn


def check_first_pass(capture: Capture, setting: Setting) -> tuple[int, ...]:
    """Check the layers on the first forward pass, fix their neuron axes, and
    return the top layer's own output shape."""
    check_forward_order(capture.order, setting.layer_names, setting.layers)
    setting.axes = [
        neuron_axis(setting.neuron_dim, output.dim(), name)
        for output, name in zip(capture.outputs, setting.layer_names)
    ]
    if setting.neuron_dim is None:
        suspects = sequence_axis_layers(
            setting.forward_func, setting.layers, setting.layer_names, capture.outputs
        )
        if suspects:
            warn(
                f"SSA takes dim 1 of a layer output as its neuron axis, but "
                f"{suspects} output 3-D tensors and are not convolutions: dim 1 is "
                "probably a sequence (token) axis there. Pass neuron_dim=-1 to "
                "StepwiseSensitivity for the features, or neuron_dim=1 to keep "
                "dim 1 and silence this warning.",
            )
    check_dependencies(capture.outputs, setting.layer_names)
    return tuple(capture.outputs[-1].movedim(1, setting.axes[-1]).shape)


def graph_starts(
    capture: Capture,
    setting: Setting,
    top_shape: tuple[int, ...],
    target: Optional[Union[Target, str]],
    top_neurons: Optional[NeuronSet],
    classes: Optional[list[int]],
    every_class: bool,
    stream: bool,
) -> tuple[list[Start], Optional[Any]]:
    """Where each graph starts, and the per-example targets of a single batch (or
    None): one graph per class of ``classes`` (of every class when
    ``every_class``), per-example labels (``target="labels"``), or the starting
    neurons that ``target`` or ``top_neurons`` name."""
    top_name = setting.layer_names[-1]
    if classes is not None or every_class:
        check_target_on_output(capture.model_output, top_shape, top_name)
        wanted = range(setting.sizes[-1]) if every_class else classes or []
        return [
            Start(torch.tensor([label]), label, label, required=not every_class) for label in wanted
        ], None
    if isinstance(target, str):  # "labels", checked with the options
        check_target_on_output(capture.model_output, top_shape, top_name)
        return [Start(None)], None
    neurons, per_example = starting_neurons(
        target,
        top_neurons,
        capture.outputs[-1],
        top_shape,
        setting.axes[-1],
        capture.model_output,
        top_name,
    )
    if per_example is None:
        return [Start(neurons, target=None if target is None else int(neurons[0]))], None
    if stream:
        raise ValueError(
            "a target with one class per example cannot follow the batches of a "
            "stream; give each batch as an (inputs, targets) pair and pass "
            "target='labels'"
        )
    return [Start(None)], per_example
