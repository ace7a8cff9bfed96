"""The LLM judge against a scripted judge server: a real OpenAI-compatible HTTP server."""

from __future__ import annotations

import re
from typing import Any

import pytest

from evalhub.eval import Case, InMemoryCache, create_metric
from evalhub.eval.metrics import ScoringContext
from evalhub.eval.metrics.llm_judge import parse_rubric, parse_verdict
from tests.scripted_server import ScriptedServer

_PAIR = re.compile(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\n", re.DOTALL)


def scripted_judge(body: dict[str, Any]) -> str:
    """Grades by markers in the answers; position-biased on BIASED; garbles on GARBLED."""
    prompt = body["messages"][-1]["content"]
    pair = _PAIR.search(prompt)
    if pair is None:
        answer = prompt.split("Response to grade:\n", 1)[1]
        if "GARBLED" in answer:
            return "It reads well, I would give it a high mark."
        if "OUTOFRANGE" in answer:
            return "Exceptional.\nSCORE: 9"
        if "GOOD" in answer:
            return "Correct and complete.\nSCORE: 5"
        return "Partly wrong.\nSCORE: 2"
    first, second = pair.groups()
    if "GARBLED" in first + second:
        return "Both have merits."
    if "BIASED" in first + second:
        return "The first one.\nVERDICT: A"
    if ("GOOD" in first) == ("GOOD" in second):
        return "Equal.\nVERDICT: TIE"
    return "Better.\nVERDICT: A" if "GOOD" in first else "Better.\nVERDICT: B"


def case(case_id: str) -> Case:
    return Case(id=case_id, input=f"question {case_id}", expected="reference")


def test_rubric_scores_parses_strictly_and_caches(start_scripted_server: Any) -> None:
    server = start_scripted_server(ScriptedServer(scripted_judge))
    cache = InMemoryCache()
    options = {"base_url": server.base_url, "model": "judge", "scale": [1, 5]}
    judge = create_metric("llm_judge", **options, api_key="secret", cache=cache)
    outputs = ["GOOD answer", "meh answer", "GARBLED answer", "OUTOFRANGE answer"]
    cases = [case(str(i)) for i in range(4)]
    scores = judge.score(outputs, cases)
    assert [s.value for s in scores] == [1.0, 0.25, None, None]
    assert scores[0].explanation == "Correct and complete." and scores[0].details["raw_score"] == 5
    assert scores[2].explanation == "unparseable verdict"
    assert "high mark" in scores[2].details["verdict"]
    aggregate = judge.aggregate(scores, outputs, cases)
    assert aggregate.value == pytest.approx(0.625) and aggregate.details["unparseable"] == 2
    assert server.calls == 4
    assert server.requests[0]["model"] == "judge" and server.requests[0]["temperature"] == 0.0

    # Same prompts, same version: all from the cache, unparseable verdicts stay unparseable.
    again = create_metric("llm_judge", **options, cache=cache).score(outputs, cases)
    assert server.calls == 4 and [s.value for s in again] == [1.0, 0.25, None, None]
    # A new prompt version is a new cache key.
    create_metric("llm_judge", **options, prompt_version="rubric-v2", cache=cache).score(
        outputs[:1], cases[:1]
    )
    assert server.calls == 5


def test_pairwise_needs_agreement_in_both_orders(start_scripted_server: Any) -> None:
    server = start_scripted_server(ScriptedServer(scripted_judge))
    judge = create_metric("llm_judge", base_url=server.base_url, model="judge", mode="pairwise")
    outputs = ["GOOD", "plain", "BIASED one", "GARBLED", "plain", "same"]
    baseline = {"0": "plain", "1": "GOOD", "2": "plain", "3": "plain", "4": "plain"}
    cases = [case(str(i)) for i in range(6)]
    scores = judge.score(outputs, cases, ScoringContext(baseline_outputs=baseline))
    assert [s.value for s in scores] == [1.0, 0.0, 0.5, None, 0.5, None]
    assert scores[0].explanation.startswith("win")
    assert scores[1].explanation.startswith("loss")
    # The biased judge says "A" in both orders: the orders disagree, so it is a tie.
    assert scores[2].details["verdicts"] == ["A", "A"] and scores[2].explanation.startswith("tie")
    assert scores[3].explanation == "unparseable verdict"
    assert scores[5].explanation == "no baseline answer for this case"
    assert server.calls == 10  # two calls per case that has a baseline
    aggregate = judge.aggregate(scores, outputs, cases)
    assert (aggregate.details["wins"], aggregate.details["ties"], aggregate.details["losses"]) == (
        1.0,
        2.0,
        1.0,
    )


def test_judge_retries_with_backoff(start_scripted_server: Any) -> None:
    server = start_scripted_server(ScriptedServer(scripted_judge, fail_first=2))
    judge = create_metric(
        "llm_judge", base_url=server.base_url, model="judge", backoff_s=0.01, max_retries=3
    )
    assert judge.score(["GOOD"], [case("0")])[0].value == 1.0
    assert server.calls == 3
    failing = start_scripted_server(ScriptedServer(scripted_judge, fail_first=100))
    judge = create_metric(
        "llm_judge", base_url=failing.base_url, model="judge", backoff_s=0.0, max_retries=1
    )
    score = judge.score(["GOOD"], [case("0")])[0]
    assert score.value is None and score.explanation.startswith("judge call failed")
    assert failing.calls == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fine\nSCORE: 4", 4),
        ("SCORE: 4\nmore words", None),
        ("score: 4", None),
        ("SCORE: 4.5", None),
        ("SCORE: 0", None),
        ("I'd say 4", None),
        ("reasons\n\nSCORE:5  \n", 5),
    ],
)
def test_rubric_parsing_never_guesses(text: str, expected: int | None) -> None:
    assert parse_rubric(text, 1, 5)[0] == expected


def test_verdict_parsing() -> None:
    assert parse_verdict("x\nVERDICT: B") == "B"
    assert parse_verdict("VERDICT: B is better") is None
    assert parse_verdict("verdict: a") is None
