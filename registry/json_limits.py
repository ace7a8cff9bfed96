"""JSON from outside, parsed with a depth limit: a document nested 100,000 deep is bad input.

Python's parser would raise RecursionError on it, and anything that walks the result later
(serialisers, validators, the database driver) could too.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects nest deeper than `limit` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def loads(text: str | bytes, limit: int = MAX_DEPTH) -> Any:
    """`json.loads`, raising ValueError (as for bad JSON) for a document nested too deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
        deep = True
    else:
        deep = too_deep(value, limit)
    if deep:
        raise ValueError(f"JSON nested deeper than {limit} levels")
    return value
