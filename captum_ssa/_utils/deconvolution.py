"""DeconvNet from an inner layer back to the input, with Captum's ReLU rule.

Captum's :class:`~captum.attr.Deconvolution` overrides the backward of every
``nn.ReLU`` module (the gradient of the ReLU input becomes the ReLU of the
gradient of its output). We reuse it as it is and only replace its gradient
function: instead of the gradient of a model output, ours seeds the backward
pass at a layer's output with given values, exactly what
:class:`~captum.attr.NeuronDeconvolution` does for a neuron selector.

A ReLU applied as a function (``F.relu``, ``torch.relu``) leaves no module to
override, so the rule silently does not apply there; we read the autograd graph
to find such ReLUs and warn.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from captum.attr import Deconvolution
from torch import Tensor, nn
from torch.nn import Module

from captum_ssa._utils.hooks import layer_name, run_and_capture
from captum_ssa._utils.linearity import _op_name


def deconvolve_from_layer(
    model: Module,
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    layer: Module,
    seed: Tensor,
    additional_forward_args: Any = None,
) -> tuple[Tensor, ...]:
    """DeconvNet backprojection of ``seed`` (shaped like ``layer``'s output).

    Equals Captum's ``NeuronDeconvolution(model, layer)`` with the neuron
    selector ``lambda output: (output * seed).sum()``; warns when ReLUs between
    the inputs and the layer are functional and so keep their ordinary gradient.
    """
    functional_relus: list[int] = []

    def gradient_from_layer(
        _forward_func: Callable[..., Any],
        gradient_inputs: tuple[Tensor, ...],
        _target: Any = None,
        _additional_forward_args: Any = None,
    ) -> tuple[Tensor, ...]:
        with relu_module_outputs(model) as module_relus:
            _, (output,) = run_and_capture(
                forward_func,
                gradient_inputs,
                [layer],
                additional_forward_args,
                stop_after_last=True,
            )
        functional_relus.append(count_functional_relus(output, module_relus))
        return torch.autograd.grad(
            output,
            gradient_inputs,
            grad_outputs=seed.to(output),
            allow_unused=True,
            materialize_grads=True,
        )

    deconvolution = Deconvolution(model)
    deconvolution.gradient_func = gradient_from_layer
    with warnings.catch_warnings():
        # Captum announces its temporary ReLU hooks on every call.
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        result = deconvolution.attribute(inputs)
    if functional_relus and functional_relus[0] > 0:
        warnings.warn(
            f"{functional_relus[0]} ReLU(s) between the inputs and layer "
            f"{layer_name(model, layer)} are functional (F.relu / torch.relu), not "
            "nn.ReLU modules: DeconvNet cannot override them, so their ordinary "
            "gradient is used there and the result is not a pure DeconvNet "
            "reconstruction. Use nn.ReLU modules for exact DeconvNet.",
            stacklevel=4,  # the caller of attribute, through Captum's log_usage
        )
    return tuple(t.detach() for t in result)


@contextmanager
def relu_module_outputs(model: Module) -> Iterator[list[Any]]:
    """Collect the autograd node of every ``nn.ReLU`` module output in the block."""
    nodes: list[Any] = []

    def record(_module: Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.grad_fn is not None:
            nodes.append(output.grad_fn)  # holding it keeps its id unique

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, nn.ReLU)
    ]
    try:
        yield nodes
    finally:
        for handle in handles:
            handle.remove()


def count_functional_relus(output: Tensor, module_relus: list[Any]) -> int:
    """ReLU nodes in ``output``'s autograd graph that no ``nn.ReLU`` module made."""
    from_modules = {id(node) for node in module_relus}
    seen: set[int] = set()
    stack: list[Optional[Any]] = [output.grad_fn]
    count = 0
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if _op_name(node) == "Relu" and id(node) not in from_modules:
            count += 1
        stack.extend(child for child, _ in node.next_functions)
    return count
