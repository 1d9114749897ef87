"""Checks shared by the method tests: the model's state before and after a call."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def hooks_left(model: nn.Module) -> int:
    """Forward, forward-pre and backward hooks registered anywhere in the model."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a call must leave as it was: training flags, ``requires_grad``,
    parameter gradients, parameter and buffer values (batch-norm statistics) and
    their version counters, and the hook count."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "versions": [t._version for t in (*model.parameters(), *model.buffers())],
        "hooks": hooks_left(model),
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"] == 0
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), f"{key} changed"
    assert before["versions"] == after["versions"]
