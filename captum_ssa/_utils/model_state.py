"""Leaving no trace on the user's model, and saying when results depend on the batch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Optional

import torch
from torch import nn

from captum_ssa._utils.hooks import claimed_modules, model_of
from captum_ssa._utils.warn import warn

_BATCH_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)

# Our hooks (and Captum's, which keep per-module state between the forward and
# the backward pass) live on the model's modules for the length of a call, and
# see every forward of those modules, from any thread. So calls whose models
# share a module (one model, or a model and a wrapper of it) are serialised by
# claiming every module of the model; calls on models apart run at once. A
# callable that is not a module may run any model: those calls are serialised
# among themselves. Both are re-entrant, because an attribution may call another
# (NoiseTunnel).
_ANY_CALLABLE_LOCK = threading.RLock()

# A fit is summarised by every parameter's and buffer's identity, storage and
# version counter: in-place changes (an optimiser step, reset_parameters,
# load_state_dict, a randomisation test) bump the counter, replacements change
# the identity or storage.
WeightsFingerprint = tuple[tuple[int, int, int], ...]


def batch_dependent_modules(model: Optional[nn.Module]) -> list[str]:
    """Class names of the dropout and batch-norm modules in training mode."""
    if model is None:
        return []
    return sorted(
        {
            type(module).__name__
            for module in model.modules()
            if module.training and isinstance(module, _BATCH_DEPENDENT)
        }
    )


def warn_if_training(model: Optional[nn.Module]) -> None:
    """Warn when dropout or batch norm in training mode make results batch-dependent."""
    active = batch_dependent_modules(model)
    if active:
        warn(
            f"the model is in training mode with {', '.join(active)}: results "
            "depend on the batch and on randomness; call model.eval() for "
            "reproducible attributions",
        )


def _exclusive(model: Optional[nn.Module]) -> AbstractContextManager[Any]:
    """Hold ``model``'s modules (any callable's lock for None) for this thread."""
    return _ANY_CALLABLE_LOCK if model is None else claimed_modules(list(model.modules()))


@contextmanager
def _private_buffers(model: Optional[nn.Module]) -> Iterator[None]:
    """Give modules in training mode copies of their buffers for the block.

    A training-mode batch norm updates its running statistics on every forward
    pass; ours must not, so the module updates a copy and gets its own tensors
    back untouched (their version counters too, so a fit stays current).
    """
    swapped: list[tuple[nn.Module, str, torch.Tensor]] = []
    if model is not None:
        for module in model.modules():
            if not module.training:
                continue
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    swapped.append((module, name, buffer))
                    module._buffers[name] = buffer.clone()
    try:
        yield
    finally:
        for module, name, buffer in swapped:
            module._buffers[name] = buffer


@contextmanager
def untouched_model(forward_func: Callable[..., Any]) -> Iterator[None]:
    """Run attribution code so that the model is left exactly as it was.

    Gradients are computed with ``torch.autograd.grad`` throughout, so no
    parameter's ``.grad`` is written; this context also restores the training
    flags, every ``.grad`` tensor and ``requires_grad`` flag should a user
    callable touch them, keeps batch-norm running statistics unchanged, turns
    gradients on inside ``torch.no_grad()`` (Captum's ``sensitivity_max`` calls
    attribution methods that way), and serialises calls from several threads
    on models that share modules.
    """
    model = model_of(forward_func)
    warn_if_training(model)
    with _exclusive(model):
        training = [] if model is None else [(m, m.training) for m in model.modules()]
        parameters = [] if model is None else list(model.parameters())
        grads = [(p, p.grad, p.requires_grad) for p in parameters]
        try:
            with torch.enable_grad(), _private_buffers(model):
                yield
        finally:
            for module, flag in training:
                module.training = flag
            for parameter, grad, requires_grad in grads:
                parameter.grad = grad
                parameter.requires_grad_(requires_grad)


def weights_fingerprint(forward_func: Callable[..., Any]) -> Optional[WeightsFingerprint]:
    """What a fit depends on: each parameter and buffer's identity, storage and
    version; None for a callable that is not a module (nothing to check)."""
    model = model_of(forward_func)
    if model is None:
        return None
    tensors = [*model.parameters(), *(b for b in model.buffers() if b is not None)]
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


def check_fit_current(
    fingerprint: Optional[WeightsFingerprint], forward_func: Callable[..., Any], method: str
) -> None:
    """Raise when the model's weights changed since the fit that took ``fingerprint``."""
    if fingerprint is not None and weights_fingerprint(forward_func) != fingerprint:
        raise RuntimeError(
            f"the model's parameters or buffers changed since {method}.fit() (an "
            "optimiser step, reset_parameters, load_state_dict, a randomisation test, "
            "or batch-norm statistics updated in training mode): the fitted reference "
            f"statistics describe the old weights. Call {method}.fit() again."
        )
