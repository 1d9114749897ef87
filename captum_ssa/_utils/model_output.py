"""The model's output as the methods read it: one tensor, chosen by ``output=``.

A transformers model returns a ``ModelOutput`` (a dict whose ``logits`` are the
scores), others a dict, a tuple or a namedtuple. Every constructor takes
``output=``, which says which tensor of it is the model's output:

- a ``str``: a key of a dict (``ModelOutput`` included) or an attribute (a
  field of a namedtuple, of any object);
- an ``int``: a position of a tuple or list (namedtuples too), or of a
  ``ModelOutput`` as its own indexing counts (its entries that are set);
- a callable: ``raw_output -> tensor``;
- None (the default): a tensor as it is, and the ``logits`` of a dict or
  object that has them.

:class:`ExplainedForward` is the function the methods run instead of the
user's ``forward_func``: the model the user wrote (the original of a compiled
or ``DistributedDataParallel`` model, :mod:`~captum_ssa._utils.compiled`),
run eagerly, its output selected. With the default and an output that has
neither form, it returns the output unchanged: only code that reads the model's
output (a ``target`` on it, the model's labels, a graph evaluation) needs a
tensor, and asks :func:`output_tensor` for one, which names what was found.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

from torch import Tensor

from captum_ssa._utils.compiled import eager, uncompiled

OutputSelector = Union[str, int, Callable[[Any], Tensor], None]

_HOW = (
    "pass output= to the constructor: a key or attribute name (e.g. output='logits'), "
    "an index (e.g. output=0) or a callable (raw output -> tensor)"
)


def checked_output(output: Any) -> OutputSelector:
    """``output`` once it is one of the forms :mod:`model_output` takes."""
    if output is None or callable(output) or isinstance(output, str):
        return output
    if isinstance(output, numbers.Integral) and not isinstance(output, bool):
        return int(output)
    raise TypeError(
        "output must be None, a key or attribute name (str), an index (int) or a "
        f"callable taking the model's output and returning a tensor; got {output!r}"
    )


def _shape(value: Any) -> str:
    if isinstance(value, Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def describe_output(raw: Any) -> str:
    """What a model output holds, for error messages: its type, and its keys,
    fields or positions with the shape of each."""
    kind = type(raw).__name__
    if isinstance(raw, Tensor):
        return f"a tensor shaped {tuple(raw.shape)}"
    if isinstance(raw, Mapping):
        entries = ", ".join(f"{key!r}: {_shape(value)}" for key, value in raw.items())
        return f"a {kind} with keys {{{entries}}}"
    fields = getattr(type(raw), "_fields", None)
    if isinstance(raw, tuple) and fields is not None:
        entries = ", ".join(f"{name}: {_shape(value)}" for name, value in zip(fields, raw))
        return f"a namedtuple {kind}({entries})"
    if isinstance(raw, (tuple, list)):
        entries = ", ".join(f"[{index}]: {_shape(value)}" for index, value in enumerate(raw))
        return f"a {kind} of {len(raw)} ({entries})"
    attributes = (
        {
            name: value
            for name, value in vars(raw).items()
            if not name.startswith("_") and isinstance(value, Tensor)
        }
        if hasattr(raw, "__dict__")
        else {}
    )
    if attributes:
        entries = ", ".join(f"{name}: {_shape(value)}" for name, value in attributes.items())
        return f"a {kind} with tensor attributes ({entries})"
    return f"a {kind}"


def _logits(raw: Any) -> Optional[Any]:
    """The ``logits`` of a dict or object that has them, else None."""
    if isinstance(raw, Mapping):
        return raw.get("logits")
    return getattr(raw, "logits", None)


def _by_key(raw: Any, key: str) -> Any:
    if isinstance(raw, Mapping):
        if key in raw:
            return raw[key]
    elif hasattr(raw, key):
        return getattr(raw, key)
    raise ValueError(f"output={key!r}, but the model returns {describe_output(raw)}")


def _by_index(raw: Any, index: int) -> Any:
    if isinstance(raw, Mapping) and index in raw:
        return raw[index]
    if isinstance(raw, Mapping) and hasattr(raw, "to_tuple"):
        entries: Any = raw.to_tuple()  # a ModelOutput: its indexing counts what is set
    elif isinstance(raw, (tuple, list)):
        entries = raw
    else:
        raise ValueError(
            f"output={index} indexes a tuple or list, but the model returns "
            f"{describe_output(raw)}; pass a key or attribute name, or a callable"
        )
    if not -len(entries) <= index < len(entries):
        raise ValueError(
            f"output={index} is out of range: the model returns {describe_output(raw)}"
        )
    return entries[index]


def select_output(raw: Any, output: OutputSelector) -> Any:
    """The tensor ``output`` selects from the model's ``raw`` output.

    With ``output=None``: a tensor as it is, the ``logits`` where there are, and
    ``raw`` unchanged otherwise (see :func:`output_tensor`). A selector that
    finds nothing, or something other than a tensor, is an error that lists what
    the model returns.
    """
    if output is None:
        if isinstance(raw, Tensor):
            return raw
        logits = _logits(raw)
        return logits if isinstance(logits, Tensor) else raw
    if callable(output):
        selected = output(raw)
        what = f"output={getattr(output, '__name__', 'callable')} returns"
    elif isinstance(output, str):
        selected = _by_key(raw, output)
        what = f"output={output!r} selects"
    else:
        selected = _by_index(raw, output)
        what = f"output={output!r} selects"
    if not isinstance(selected, Tensor):
        raise TypeError(
            f"{what} {describe_output(selected)}, not a tensor; the model returns "
            f"{describe_output(raw)}"
        )
    return selected


def output_tensor(value: Any, purpose: str) -> Tensor:
    """``value``, the model's output as :class:`ExplainedForward` returns it, once it
    is a tensor; else an error that says what the model returns and how to choose
    (``purpose`` says what needs it)."""
    if isinstance(value, Tensor):
        return value
    raise TypeError(
        f"{purpose} needs the model's output as a tensor, but the model returns "
        f"{describe_output(value)} and none of it is named logits: {_HOW}"
    )


class ExplainedForward:
    """The function the methods run for the user's ``forward_func``.

    ``ExplainedForward(forward_func, output)(*inputs, *extra)`` runs the model
    the user wrote (:func:`~captum_ssa._utils.compiled.uncompiled`) under
    :func:`~captum_ssa._utils.compiled.eager`, and returns the tensor ``output``
    selects (:func:`select_output`). ``model_forward`` is what runs;
    :func:`~captum_ssa._utils.hooks.model_of` finds the model behind it.
    """

    def __init__(self, forward_func: Callable[..., Any], output: OutputSelector = None) -> None:
        self.model_forward = uncompiled(forward_func)
        self.output = output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with eager():
            raw = self.model_forward(*args, **kwargs)
        return select_output(raw, self.output)


class ReadsModelOutput:
    """Mixin of the explainers: ``_forward`` is the model as the method runs it,
    ``forward_func`` through the module the user wrote, its output selected by the
    ``output=`` the constructor checked (:func:`checked_output`)."""

    forward_func: Callable[..., Any]
    output: OutputSelector

    @property
    def _forward(self) -> ExplainedForward:
        return ExplainedForward(self.forward_func, self.output)
