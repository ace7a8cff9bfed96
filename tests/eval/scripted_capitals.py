"""The scripted target for platform tests: a fake model per name answering the capitals suite.

Served by tests/scripted_server.py's ScriptedServer (a real OpenAI-compatible HTTP server on
127.0.0.1), so the platform, the runner and the `openai` client run end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "suites"
SUITE = EXAMPLES / "capitals.yaml"
DATASET = EXAMPLES / "capitals.jsonl"

CAPITALS = {
    row["input"]: row["expected"]
    for row in map(json.loads, DATASET.read_text(encoding="utf-8").splitlines())
}
N_CASES = len(CAPITALS)

# Which countries each scripted model gets wrong; "base" models stand for a registry version.
WRONG = {
    "good-model": set(),
    "base-model": {"Brazil", "Australia"},
    "same-model": {"Brazil", "Australia"},
    "bad-model": {"Brazil", "Australia", "Canada", "India", "Vietnam", "Spain", "Poland", "Japan"},
}


def scripted_capitals(body: dict[str, Any]) -> str:
    """Answers `What is the capital of X?` right unless the model name is scripted to miss X.

    Registry versions (`name/N`, as the serving endpoint receives them) answer like base-model.
    """
    question = body["messages"][-1]["content"]
    country = question.removeprefix("What is the capital of ").removesuffix("?")
    model = body["model"] if body["model"] in WRONG else "base-model"
    if country in WRONG[model]:
        return "I am not sure."
    return CAPITALS[country]


def request_body(model: str, endpoint: str | None = None, **options: Any) -> dict[str, Any]:
    """A POST /api/v1/evals body for the example suite with its dataset inline."""
    return {
        "suite": SUITE.read_text(encoding="utf-8"),
        "filename": SUITE.name,
        "dataset": DATASET.read_text(encoding="utf-8"),
        "target": {"model": model, "endpoint": endpoint},
        "options": options,
    }
