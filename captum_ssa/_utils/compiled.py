"""Compiled and wrapped models: explained through the module the user wrote.

Every method reads layers by forward hooks on the user's modules. Two wrappers
keep those hooks from telling the truth:

- ``torch.compile`` returns an ``OptimizedModule`` that holds the model as
  ``_orig_mod`` and runs compiled code, which calls no hook registered after
  it was compiled (the layers then seem never to run), and whose backward is
  a compiled function that ``torch.func`` transforms refuse and the autograd
  graph shows as one opaque node. The same module, run as written, computes
  the same function: :func:`uncompiled` explains ``_orig_mod`` (and the
  original of a compiled function) instead.
- ``DistributedDataParallel`` runs its ``module`` with collectives around it
  (buffer broadcasts, gradient buckets that expect ``.backward()`` on every
  rank); the methods call the model many times and differentiate with
  ``torch.autograd.grad``, so they run ``module`` itself, which computes the
  same function on this rank. ``nn.DataParallel`` is left as it is: on the CPU
  or one device it calls its module, and on several GPUs
  :func:`~captum_ssa._utils.hooks.run_and_capture` refuses its replicas with
  an error that says to pass ``model.module``.

A compiled model the methods cannot swap for its original (a function of the
user's that calls one, a model the user calls inside ``graph.mask``) runs
eagerly inside :func:`eager`, which sets ``torch.compiler``'s ``"force_eager"``
stance (torch 2.6 and later) for the block. Without that stance it is an
error that says to pass the original module: up front where the compiled
model is the one given (:func:`eager_or_refused`), and in the message of a
layer that did not run where it is called inside a function.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel


def _optimized_module_class() -> Any:
    """``torch.compile``'s module wrapper, or None where nothing was compiled yet
    (``torch._dynamo`` is imported by the first ``torch.compile``, and importing it
    here would cost every user seconds)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def is_compiled(forward_func: Any) -> bool:
    """Whether ``forward_func`` is a ``torch.compile``d module or function."""
    optimized = _optimized_module_class()
    if optimized is not None and isinstance(forward_func, optimized):
        return True
    return callable(forward_func) and hasattr(forward_func, "_torchdynamo_orig_callable")


def uncompiled(forward_func: Callable[..., Any]) -> Callable[..., Any]:
    """What the methods run for ``forward_func``: the original of a compiled module
    (``_orig_mod``) or function, the ``module`` of a ``DistributedDataParallel``,
    through any number of such levels; anything else as it is."""
    optimized = _optimized_module_class()
    while True:
        if optimized is not None and isinstance(forward_func, optimized):
            forward_func = forward_func._orig_mod
        elif isinstance(forward_func, DistributedDataParallel):
            forward_func = forward_func.module
        elif not isinstance(forward_func, Module) and hasattr(
            forward_func, "_torchdynamo_orig_callable"
        ):
            forward_func = forward_func._torchdynamo_orig_callable
        else:
            return forward_func


# The compiler's stance is one global, not per thread: explanations running at once
# in several threads share one "force_eager" setting, set by the first to enter and
# restored by the last to leave, so no thread's compiled calls compile in between.
_STANCE_LOCK = threading.Lock()
_stance_holders: list[Any] = []  # the set_stance whose exit restores the prior stance
_stance_depth = [0]


@contextmanager
def eager() -> Iterator[None]:
    """Run compiled models eagerly in the block, where torch can (2.6 and later), so
    that the layers' hooks fire; nothing where nothing was ever compiled. While any
    such block runs, compiled code in every thread runs eagerly (the same results,
    without the speed)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None or "torch._dynamo" not in sys.modules:
        yield
        return
    with _STANCE_LOCK:
        if _stance_depth[0] == 0:
            _stance_holders.append(set_stance("force_eager"))  # called: set now
        _stance_depth[0] += 1
    try:
        yield
    finally:
        with _STANCE_LOCK:
            _stance_depth[0] -= 1
            if _stance_depth[0] == 0:
                _stance_holders.pop().__exit__(None, None, None)


def eager_or_refused(model: Any) -> contextlib.AbstractContextManager[None]:
    """:func:`eager` for a model the user calls in the block (``graph.mask``), which
    cannot be swapped for its original: on a torch without the ``"force_eager"``
    stance, a compiled one is an error that says to pass the original module."""
    if is_compiled(model) and not hasattr(torch.compiler, "set_stance"):
        raise TypeError(
            f"{type(model).__name__} is torch.compile'd, and this torch (before 2.6) "
            "cannot run compiled code eagerly: compiled code calls no forward hook, so "
            "no neuron would be masked. Pass the original module (model._orig_mod, or "
            "the model before torch.compile)."
        )
    return eager()
