"""What changed between two dataset versions, row by row, and which prompts contradict each other.

Rows are matched by what they ask: an eval case by its `id` (or, without one, its input or
messages), a chat example by its conversation up to the last assistant turn. A matched row whose
answer (or any other field) differs is changed. A contradiction is one prompt with two or more
different answers inside one version: a model trained or scored on it is told two things at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from registry.entities import DatasetFormat

#: Rows shown per kind of change; the counts are always whole.
EXAMPLES = 20


class Changed(BaseModel):
    key: str
    before: dict[str, Any]
    after: dict[str, Any]


class Contradiction(BaseModel):
    prompt: str
    answers: list[str]
    lines: list[int] = Field(description="1-based line numbers in the version")


class DatasetDiff(BaseModel):
    base: str
    target: str
    added: int
    removed: int
    changed: int
    unchanged: int
    examples_added: list[dict[str, Any]]
    examples_removed: list[dict[str, Any]]
    examples_changed: list[Changed]
    contradictions: list[Contradiction] = Field(description="in the target version")
    contradictions_in_base: int


def diff_datasets(
    base: Path, target: Path, dataset_format: DatasetFormat, *, labels: tuple[str, str]
) -> DatasetDiff:
    """`labels` name the two versions in the result (their refs)."""
    before, after = _index(base, dataset_format), _index(target, dataset_format)
    added = [row for key, row in after.items() if key not in before]
    removed = [row for key, row in before.items() if key not in after]
    changed = [
        Changed(key=key, before=before[key], after=row)
        for key, row in after.items()
        if key in before and _canonical(before[key]) != _canonical(row)
    ]
    unchanged = sum(1 for key in after if key in before) - len(changed)
    contradictions = _contradictions(target, dataset_format)
    return DatasetDiff(
        base=labels[0],
        target=labels[1],
        added=len(added),
        removed=len(removed),
        changed=len(changed),
        unchanged=unchanged,
        examples_added=added[:EXAMPLES],
        examples_removed=removed[:EXAMPLES],
        examples_changed=changed[:EXAMPLES],
        contradictions=contradictions[:EXAMPLES],
        contradictions_in_base=len(_contradictions(base, dataset_format)),
    )


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, json.loads(line)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _prompt_and_answer(row: dict[str, Any], dataset_format: DatasetFormat) -> tuple[str, str]:
    """What the row asks and what it says the answer is, each as canonical text."""
    if dataset_format is DatasetFormat.CHAT:
        messages = list(row.get("messages") or [])
        last = max(
            (i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None
        )
        if last is None:
            return _canonical(messages), ""
        return _canonical(messages[:last]), _canonical(messages[last].get("content"))
    asked = row["messages"] if "messages" in row else row.get("input")
    return _canonical(asked), _canonical(row.get("expected"))


def _key(row: dict[str, Any], dataset_format: DatasetFormat) -> str:
    if dataset_format is DatasetFormat.EVAL and "id" in row:
        return f"id:{row['id']}"
    return _prompt_and_answer(row, dataset_format)[0]


def _index(path: Path, dataset_format: DatasetFormat) -> dict[str, dict[str, Any]]:
    """Each key's last row (a duplicate key is a later edit of the same row)."""
    return {_key(row, dataset_format): row for _, row in _rows(path)}


def _contradictions(path: Path, dataset_format: DatasetFormat) -> list[Contradiction]:
    answers: dict[str, dict[str, list[int]]] = {}
    for number, row in _rows(path):
        prompt, answer = _prompt_and_answer(row, dataset_format)
        answers.setdefault(prompt, {}).setdefault(answer, []).append(number)
    return [
        Contradiction(
            prompt=prompt,
            answers=list(given),
            lines=sorted(line for lines in given.values() for line in lines),
        )
        for prompt, given in answers.items()
        if len(given) > 1
    ]
