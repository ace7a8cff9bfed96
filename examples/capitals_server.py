"""A scripted OpenAI-compatible server for trying `evalhub eval` and `evalhub gate` in seconds.

    python examples/capitals_server.py [--port 18888]

serves /v1/chat/completions for four "models" that answer the capitals suite
(examples/suites/capitals.yaml) from a script: good-model knows every capital, base-model misses
two, bad-model misses eight, and asia-model misses every Asian one. Any other model name answers
like base-model. A fifth, judge-model, grades as an `llm_judge` rubric judge would: 5 for an
answer that is the reference, 1 for any other. Real HTTP, real OpenAI response bodies; only the
answers are scripted.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

DATASET = Path(__file__).resolve().parent / "suites" / "capitals.jsonl"
ROWS = [json.loads(line) for line in DATASET.read_text(encoding="utf-8").splitlines()]
CAPITALS = {row["input"]: row["expected"] for row in ROWS}
ASIA = {row["input"] for row in ROWS if "asia" in row.get("tags", [])}

MISSES = {
    "good-model": set(),
    "base-model": {"Brazil", "Australia"},
    "bad-model": {"Brazil", "Australia", "Canada", "India", "Vietnam", "Spain", "Poland", "Japan"},
    "asia-model": ASIA,
}


JUDGE = "judge-model"


def grade(prompt: str) -> str:
    """The judge's verdict on an `llm_judge` rubric prompt (its reference and response)."""
    reference = prompt.partition("Reference answer:\n")[2].partition("\n\n")[0]
    response = prompt.partition("Response to grade:\n")[2].partition("\n\nGrade the")[0]
    if reference and response.strip() == reference.strip():
        return "The response is the reference answer.\nSCORE: 5"
    return "The response is not the reference answer.\nSCORE: 1"


def answer(model: str, question: str) -> str:
    if model == JUDGE:
        return grade(question)
    country = question.removeprefix("What is the capital of ").removesuffix("?")
    if country not in CAPITALS or country in MISSES.get(model, MISSES["base-model"]):
        return "I am not sure."
    return CAPITALS[country]


def app() -> Any:
    from fastapi import FastAPI

    server = FastAPI(title="capitals (scripted)")

    @server.get("/v1/models")
    def models() -> dict[str, Any]:
        names = [*MISSES, JUDGE]
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in names]}

    @server.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        text = answer(body["model"], body["messages"][-1]["content"])
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(text.split()),
                "total_tokens": prompt_tokens + len(text.split()),
            },
        }

    return server


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18888)
    port = parser.parse_args().port
    names = ", ".join([*MISSES, JUDGE])
    print(f"scripted models {names} at http://127.0.0.1:{port}/v1", flush=True)
    uvicorn.run(app(), host="127.0.0.1", port=port, access_log=False)


if __name__ == "__main__":
    main()
