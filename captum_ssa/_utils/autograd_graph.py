"""Walking the autograd graph behind a tensor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional


def walk(root: Optional[Any]) -> Iterator[Any]:
    """Every node of the autograd graph below ``root`` (a ``grad_fn``), once each.

    Iterative, so deep graphs need no recursion. The nodes seen are kept alive
    until the walk ends: torch may hand out a fresh Python object for a node on
    each access and free it afterwards, and a freed object's ``id`` can be
    reused by the next node, which would then wrongly count as seen.
    """
    seen: dict[int, Any] = {}
    pending = [root]
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        yield node
        pending.extend(child for child, _ in node.next_functions)
