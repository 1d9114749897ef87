"""The package's warnings: one category, pointed at the user's own line.

Every warning of captum-ssa is a :class:`CaptumSSAWarning`, so a user can filter
them as one (``warnings.simplefilter("ignore", CaptumSSAWarning)``) without
silencing anyone else's. :func:`warn` reports it at the line that called into the
package, found by walking the stack rather than by counting frames: the same
warning is reached through different depths (a tensor or a stream, Captum's
``log_usage`` wrapper, ``NoiseTunnel``, a forward hook), and a counted
``stacklevel`` points into the package from all but one of them.
"""

from __future__ import annotations

import sys
import warnings
from types import FrameType
from typing import Optional

# Frames of these packages lie between the user's call and ours (Captum's wrappers
# and NoiseTunnel, torch's module call and hooks, context managers): the warning
# goes to the first frame beyond them.
_WRAPPERS = ("captum", "torch", "contextlib", "functools")


class CaptumSSAWarning(UserWarning):
    """A warning of captum-ssa: a result that may not mean what it seems, or an
    argument that was probably not meant."""


def _module(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", ""))


def _in_package(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` called by this function's
    caller point at the line that called into captum-ssa.

    That line is the caller of the outermost captum-ssa frame on the stack, or
    of any Captum, torch or standard-library wrapper around that frame.
    """
    frames: list[FrameType] = []
    frame: Optional[FrameType] = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    outermost = max(
        (i for i, f in enumerate(frames) if _in_package(_module(f), ("captum_ssa",))), default=0
    )
    level = outermost + 1
    while level < len(frames) and _in_package(_module(frames[level]), _WRAPPERS):
        level += 1
    # frames[0] is our caller, which is stacklevel 1 for its warnings.warn
    return min(level, len(frames) - 1) + 1


def warn(message: str, category: type[Warning] = CaptumSSAWarning) -> None:
    """Issue ``message`` as a :class:`CaptumSSAWarning` (or ``category``) at the
    user's line (see :func:`user_stacklevel`)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
