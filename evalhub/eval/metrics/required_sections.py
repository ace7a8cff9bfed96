"""Fraction of required sections present: Markdown headings, or keys of a JSON object."""

from __future__ import annotations

import re
from typing import Any

from evalhub.eval.case import Case
from evalhub.eval.metrics._base import Metric, per_case
from evalhub.eval.metrics._json import parse_json
from evalhub.eval.metrics._registry import register_metric
from evalhub.eval.record import Score

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _json_has(value: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


@register_metric("required_sections")
def required_sections(sections: list[str] | None = None, format: str = "markdown") -> Metric:
    if format not in ("markdown", "json"):
        raise ValueError("format must be 'markdown' or 'json'")

    def score(output: str, case: Case) -> Score:
        wanted = sections if sections is not None else case.expected
        if not isinstance(wanted, list) or not wanted:
            return Score(value=None, explanation="no sections: give the option or expected list")
        if format == "json":
            value, error = parse_json(output)
            if error is not None:
                return Score(value=0.0, explanation=error)
            missing = [name for name in wanted if not _json_has(value, name)]
        else:
            headings = {heading.casefold() for heading in _HEADING.findall(output)}
            missing = [name for name in wanted if name.casefold() not in headings]
        explanation = f"missing: {', '.join(missing)}" if missing else "all present"
        return Score(value=1 - len(missing) / len(wanted), explanation=explanation)

    return Metric(per_case(score))
