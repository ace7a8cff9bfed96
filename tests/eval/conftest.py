"""Fixtures for the evaluation tests: suite files on disk; the scripted servers are shared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def write_suite(directory: Path, suite: str, cases: list[dict[str, Any]] | str) -> Path:
    """Write `suite.yaml` and `cases.jsonl` into directory; returns the suite path."""
    lines = cases if isinstance(cases, str) else "\n".join(json.dumps(c) for c in cases) + "\n"
    (directory / "cases.jsonl").write_text(lines, encoding="utf-8")
    path = directory / "suite.yaml"
    path.write_text(suite, encoding="utf-8")
    return path


@pytest.fixture
def suite_dir(tmp_path: Path) -> Path:
    return tmp_path
