"""Reading JSON out of model output, which often wraps it in a Markdown code fence."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_json(text: str, strip_fence: bool = True) -> tuple[Any, str | None]:
    """(value, None) when the text is JSON, (None, reason) when it is not."""
    if strip_fence:
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group(1)
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
