"""DeconvNet from the most influential units of a layer back to the input, with
Captum's ReLU rule.

:func:`top_unit_seed` keeps each example's top units by influence (their
activation values, every other unit zero); :func:`deconvolve_from_layer`
backprojects that seed.

Captum's :class:`~captum.attr.Deconvolution` overrides the backward of every
``nn.ReLU`` module (the gradient of the ReLU input becomes the ReLU of the
gradient of its output). We reuse it as it is and only replace its gradient
function: instead of the gradient of a model output, ours seeds the backward
pass at a layer's output with given values, exactly what
:class:`~captum.attr.NeuronDeconvolution` does for a neuron selector.

A ReLU applied as a function (``F.relu``, ``torch.relu``) leaves no module to
override, and Captum overrides no activation but ``nn.ReLU`` modules
(``nn.ReLU6``, ``nn.LeakyReLU``, ``nn.GELU``, ``nn.Sigmoid``, ``F.gelu`` in a
transformers block, ...): the rule silently does not apply there. We read the
operations of the autograd graph between the inputs and the layer (the
``ACTIVATION`` kind of :mod:`~captum_ssa._utils.autograd_graph`), which sees
activations however they are applied, to find both and warn; an activation
module's own output is named by its class.
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
from torch.nn.modules import activation as activation_modules

from captum_ssa._utils.autograd_graph import OpKind, classify, op_name, walk
from captum_ssa._utils.hooks import layer_name, run_and_capture
from captum_ssa._utils.warn import warn

# Every activation module torch defines (nn.ReLU included, to tell its nodes
# from functional ReLUs); attention is no activation.
_ACTIVATION_MODULES = tuple(
    getattr(activation_modules, name)
    for name in activation_modules.__all__
    if name != "MultiheadAttention"
)


def top_unit_seed(
    activation: Tensor,
    influence: Tensor,
    top_fraction: float,
    top_k: Optional[int],
    real_tokens: Optional[Tensor] = None,
) -> Tensor:
    """The activation at each example's top units by |influence|, zero elsewhere.

    ``real_tokens`` (booleans broadcast over ``activation``, for a token layer under
    a mask) restricts every example's units to those of its real tokens: the
    fraction is of their number, and no pad is kept.
    """
    units = influence[0].numel()
    if real_tokens is None:
        per_example = torch.full((len(influence),), units, device=influence.device)
    else:
        real_tokens = real_tokens.expand(influence.shape).reshape(len(influence), -1)
        per_example = real_tokens.sum(1)
    if top_k is None:
        if not isinstance(top_fraction, (int, float)) or not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
        # the tiny margin keeps e.g. 0.025 * 1000 = 25.000000000000004 at 25
        kept = (top_fraction * per_example.double() - 1e-9).ceil().clamp(min=1).long()
    else:
        fewest = int(per_example.min())
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= fewest:
            where = "the layer's" if real_tokens is None else "the real tokens'"
            raise ValueError(
                f"top_k must be an integer from 1 to {where} {fewest} units, got {top_k!r}"
            )
        kept = torch.full_like(per_example, top_k)
    scores = influence.reshape(len(influence), -1).abs()
    if real_tokens is not None:  # below every real unit's |influence| >= 0
        scores = torch.where(real_tokens, scores, torch.full_like(scores, -1.0))
    top = scores.topk(int(kept.max()), dim=1).indices
    ranks = torch.arange(top.shape[1], device=top.device)[None, :]
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(1, top, ranks < kept.to(top.device)[:, None])
    flat_activation = activation.detach().reshape(len(activation), -1)
    seed = torch.where(keep, flat_activation, torch.zeros_like(flat_activation))
    return seed.reshape(activation.shape)


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
    the inputs and the layer are functional, or activation modules there are
    not ``nn.ReLU``, and so keep their ordinary gradient.
    """
    not_overridden: list[tuple[int, list[str]]] = []

    def gradient_from_layer(
        _forward_func: Callable[..., Any],
        gradient_inputs: tuple[Tensor, ...],
        _target: Any = None,
        _additional_forward_args: Any = None,
    ) -> tuple[Tensor, ...]:
        with activation_module_outputs(model) as module_outputs:
            _, (output,) = run_and_capture(
                forward_func,
                gradient_inputs,
                [layer],
                additional_forward_args,
                stop_after_last=True,
            )
        not_overridden.append(activations_not_overridden(output, module_outputs))
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
    if not_overridden:
        _warn_not_overridden(*not_overridden[0], layer_name(model, layer))
    return tuple(t.detach() for t in result)


def _warn_not_overridden(functional_relus: int, other_kinds: list[str], layer: str) -> None:
    problems = []
    if functional_relus:
        problems.append(
            f"{functional_relus} ReLU(s) are functional (F.relu / torch.relu), not nn.ReLU modules"
        )
    if other_kinds:
        problems.append(
            f"{len(other_kinds)} activation(s) are not nn.ReLU "
            f"({', '.join(sorted(set(other_kinds)))})"
        )
    if problems:
        warn(
            f"between the inputs and layer {layer}, {' and '.join(problems)}: "
            "DeconvNet overrides only nn.ReLU modules, so their ordinary gradient "
            "is used there and the result is not a pure DeconvNet reconstruction. "
            "Use nn.ReLU modules for exact DeconvNet.",
        )


@contextmanager
def activation_module_outputs(model: Module) -> Iterator[dict[int, tuple[Any, str]]]:
    """Collect, by node id, the autograd node of every activation module's
    output in the block, with the module's class name, or "" for an
    ``nn.ReLU`` (which DeconvNet overrides)."""
    nodes: dict[int, tuple[Any, str]] = {}

    def record(module: Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.grad_fn is not None:
            kind = "" if isinstance(module, nn.ReLU) else type(module).__name__
            nodes[id(output.grad_fn)] = (output.grad_fn, kind)  # holding it keeps its id unique

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, _ACTIVATION_MODULES)
    ]
    try:
        yield nodes
    finally:
        for handle in handles:
            handle.remove()


def activations_not_overridden(
    output: Tensor, module_outputs: dict[int, tuple[Any, str]]
) -> tuple[int, list[str]]:
    """In ``output``'s autograd graph: the number of ReLU nodes that no
    activation module made (functional ReLUs), and a name for each other
    activation: the class of an activation module other than ``nn.ReLU`` that
    made the node, or the operation, such as ``"Gelu (functional)"``, where no
    activation module did (``F.gelu``, a transformers activation)."""
    functional_relus, other_kinds = 0, []
    for node in walk(output.grad_fn):
        if id(node) in module_outputs:
            kind = module_outputs[id(node)][1]
            if kind:
                other_kinds.append(kind)
        elif op_name(node) == "Relu":
            functional_relus += 1
        elif classify(node) & OpKind.ACTIVATION:
            other_kinds.append(f"{op_name(node)} (functional)")
    return functional_relus, other_kinds
