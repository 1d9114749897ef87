"""Leaving no trace on the user's model, and saying when results depend on the batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import nn

from captum_ssa._utils.hooks import model_of

_BATCH_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def warn_if_training(model: Optional[nn.Module]) -> None:
    """Warn when dropout or batch norm in training mode make results batch-dependent."""
    if model is None:
        return
    active = sorted(
        {
            type(module).__name__
            for module in model.modules()
            if module.training and isinstance(module, _BATCH_DEPENDENT)
        }
    )
    if active:
        warnings.warn(
            f"the model is in training mode with {', '.join(active)}: results "
            "depend on the batch and on randomness; call model.eval() for "
            "reproducible attributions",
            stacklevel=3,
        )


@contextmanager
def untouched_model(forward_func: Callable[..., Any]) -> Iterator[None]:
    """Run attribution code so that the model is left exactly as it was.

    Gradients are computed with ``torch.autograd.grad`` throughout, so no
    parameter's ``.grad`` is written; this context also restores the training
    flags and every ``.grad`` tensor should a user callable touch them, and turns
    gradients on inside ``torch.no_grad()`` (Captum's ``sensitivity_max`` calls
    attribution methods that way).
    """
    model = model_of(forward_func)
    warn_if_training(model)
    training = [] if model is None else [(m, m.training) for m in model.modules()]
    grads = [] if model is None else [(p, p.grad) for p in model.parameters()]
    try:
        with torch.enable_grad():
            yield
    finally:
        for module, flag in training:
            module.training = flag
        for parameter, grad in grads:
            parameter.grad = grad
