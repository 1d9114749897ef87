"""Explaining from token ids: the model as a function of its embedding layer's output.

A gradient with respect to token ids does not exist. Methods that differentiate
with respect to their inputs (SwitchedLinearProjection, InactiveStateSensitivity,
LayeredInfluence's DeconvNet) therefore take ``embedding_layer=`` and do what
Captum's layer methods (``LayerIntegratedGradients``) do: the model runs on the
ids, and the embedding layer's output is replaced by a leaf tensor that requires
grad, so the attribution is with respect to the embeddings, shaped ``(N, T, D)``.

:func:`attributed_inputs` gives such a method, in one place, what it
differentiates with respect to and the forward function of it: the inputs
themselves, or the embeddings of the ids with :class:`EmbeddingForward`, which
runs the model on the ids with the embeddings put in place of the layer's
output. Everything else in the method (its hooks on other layers, its Jacobians,
Captum's DeconvNet) sees an ordinary forward function of floating-point inputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor
from torch.nn import Module

from captum_ssa._utils.hooks import (
    ReusedLayerError,
    check_layers_in_model,
    replicated_layer_message,
    run_and_capture,
)
from captum_ssa._utils.validation import fresh_leaf, prepare_inputs


def checked_embedding_layer(
    forward_func: Callable[..., Any], embedding_layer: Optional[Module]
) -> Optional[Module]:
    """``embedding_layer`` (None allowed) once it is known to be a module of the model."""
    if embedding_layer is not None:
        if not isinstance(embedding_layer, Module):
            raise TypeError(
                "embedding_layer must be a torch.nn.Module (the model's embedding, e.g. "
                f"model.embedding) or None, got {type(embedding_layer).__name__}"
            )
        check_layers_in_model(forward_func, [embedding_layer])
    return embedding_layer


@contextmanager
def replaced_output(layer: Module, replacement: Tensor) -> Iterator[None]:
    """Run the block with ``layer``'s output replaced by (a clone of) ``replacement``.

    The layer must run exactly once, and return a tensor shaped like
    ``replacement``. The network receives a clone, so that an in-place operation
    after the layer cannot change ``replacement`` (a leaf that requires grad
    would even refuse it). The hook runs before any other forward hook of the
    layer, so that they see the replacement, and is removed whatever happens.
    """
    calls = [0]
    counting = threading.Lock()  # a forward may run layers in worker threads

    def hook(module: Module, _args: Any, output: Any) -> Tensor:
        if module is not layer:  # a copy sharing the layer's hooks: a replica
            raise RuntimeError(replicated_layer_message(layer))
        with counting:
            calls[0] += 1
            first = calls[0] == 1
        if not first:
            raise ReusedLayerError(
                f"embedding layer {type(layer).__name__} runs more than once in one "
                "forward pass; its output is ambiguous. Use a separate module instance "
                "for each use."
            )
        if not isinstance(output, Tensor) or output.shape != replacement.shape:
            found = (
                f"a tensor shaped {tuple(output.shape)}"
                if isinstance(output, Tensor)
                else type(output).__name__
            )
            raise ValueError(
                f"embedding layer {type(layer).__name__} returns {found} here, but the "
                f"embeddings put in its place are shaped {tuple(replacement.shape)}"
            )
        return replacement.clone()

    handle = layer.register_forward_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()
    if calls[0] == 0:
        raise ValueError(
            f"embedding layer {type(layer).__name__} did not run during the forward "
            "pass; is it the model's embedding, used by its forward?"
        )


class EmbeddingForward:
    """``forward_func`` as a function of ``embedding_layer``'s output, for fixed inputs.

    ``EmbeddingForward(model, model.embedding, (ids,))(embeddings, *extra)`` runs
    ``model(ids, *extra)`` with ``embeddings`` in place of the embedding's output,
    so positions, masks or anything else the model computes from the ids stay
    those of ``ids``. ``embeddings`` must be shaped like that output.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        embedding_layer: Module,
        inputs: tuple[Tensor, ...],
    ) -> None:
        self.forward_func = forward_func
        self.embedding_layer = embedding_layer
        self.inputs = inputs

    def __call__(self, embeddings: Tensor, *additional_forward_args: Any) -> Any:
        with replaced_output(self.embedding_layer, embeddings):
            return self.forward_func(*self.inputs, *additional_forward_args)


def embeddings_of(
    forward_func: Callable[..., Any],
    embedding_layer: Module,
    inputs: tuple[Tensor, ...],
    additional_forward_args: Any = None,
) -> Tensor:
    """``embedding_layer``'s output for ``inputs``, detached (the forward pass
    stops there)."""
    with torch.no_grad():
        _, (embeddings,) = run_and_capture(
            forward_func, inputs, [embedding_layer], additional_forward_args, stop_after_last=True
        )
    if not embeddings.is_floating_point():
        raise TypeError(
            f"embedding layer {type(embedding_layer).__name__} returns dtype "
            f"{embeddings.dtype}; the attribution needs floating-point embeddings"
        )
    return embeddings.detach()


@dataclass(frozen=True)
class AttributedInputs:
    """What a gradient method differentiates with respect to, for one call.

    ``given`` are the formatted inputs (token ids with an embedding layer);
    ``leaves`` the tensors the attribution is shaped like and differentiated
    with respect to, fresh leaves that require grad: the inputs themselves, or
    the embedding layer's output for them (one tensor); ``forward_func`` runs
    the model from ``leaves`` (``forward_func(*leaves, *additional_forward_args)``).
    """

    given: tuple[Tensor, ...]
    leaves: tuple[Tensor, ...]
    forward_func: Callable[..., Any]
    embedding_layer: Optional[Module]
    model_forward: Callable[..., Any]

    def points_for(
        self, inputs: tuple[Tensor, ...], additional_forward_args: Any = None
    ) -> tuple[Tensor, ...]:
        """The points of the attributed space for other formatted ``inputs``
        (baselines): the inputs themselves, or the embedding layer's output for
        them, as Captum's layer methods read baselines."""
        if self.embedding_layer is None:
            return inputs
        return (
            embeddings_of(
                self.model_forward, self.embedding_layer, inputs, additional_forward_args
            ),
        )


def attributed_inputs(
    forward_func: Callable[..., Any],
    embedding_layer: Optional[Module],
    inputs: Any,
    additional_forward_args: Any = None,
) -> AttributedInputs:
    """The inputs checked, and what to differentiate with respect to (see
    :class:`AttributedInputs`). Without ``embedding_layer`` integer inputs are an
    error that names it; with it the model runs once on the inputs, to read the
    embeddings (call it where the model is held, inside ``untouched_model``)."""
    if embedding_layer is None:
        prepared = prepare_inputs(inputs)
        return AttributedInputs(prepared, prepared, forward_func, None, forward_func)
    given = prepare_inputs(inputs, integers_allowed=True)
    embeddings = embeddings_of(forward_func, embedding_layer, given, additional_forward_args)
    return AttributedInputs(
        given,
        (fresh_leaf(embeddings),),
        EmbeddingForward(forward_func, embedding_layer, given),
        embedding_layer,
        forward_func,
    )
