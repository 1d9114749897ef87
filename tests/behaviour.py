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
    """Training flags, parameter gradients and hook count, to compare after a call."""
    return {
        "training": [m.training for m in model.modules()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": hooks_left(model),
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"] == 0
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
