"""The runner against a scripted target server, and gate decisions over real runs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest

from evalhub.eval import (
    EvalRun,
    GatePolicy,
    InMemoryCache,
    JsonlSink,
    RunOptions,
    SQLiteCache,
    Target,
    gate,
    junit_xml,
    load_run,
    load_suite,
    markdown_summary,
    run_suite,
    save_run,
)
from tests.eval.conftest import write_suite
from tests.scripted_server import ScriptedServer

N_CASES = 40

SUITE = """\
name: arithmetic
version: 1
dataset: cases.jsonl
prompt:
  - role: user
    content: "What is {input}? Reply with the number only."
sampling: {temperature: 0, max_tokens: 8, seed: 1}
metrics:
  - name: exact_match
    threshold: 0.5
    weight: 3
  - name: rouge1
  - name: latency
  - name: cost
    options: {prices: {good-model: {prompt: 1.0, completion: 2.0}}}
slices:
  - {name: big, tags: [big]}
"""


def cases() -> list[dict[str, Any]]:
    return [
        {"id": f"c{i}", "input": f"{i} + {i}", "expected": str(2 * i), "tags": ["big"] * (i >= 20)}
        for i in range(N_CASES)
    ]


def scripted_model(body: dict[str, Any]) -> str:
    """Answers right for the share of cases its model name implies (deterministic by case)."""
    question = body["messages"][-1]["content"]
    number = int(question.split("What is ")[1].split(" +")[0])
    accuracy = {"good-model": 0.9, "mid-model": 0.6, "bad-model": 0.3}[body["model"]]
    return str(2 * number) if (number * 37 % 100) / 100 < accuracy else f"{2 * number + 1} maybe"


def accuracy(model: str) -> float:
    right = sum(
        scripted_model(
            {
                "model": model,
                "messages": [{"content": f"What is {i} + {i}? Reply with the number."}],
            }
        )
        == str(2 * i)
        for i in range(N_CASES)
    )
    return right / N_CASES


@pytest.fixture
def suite(tmp_path: Path) -> Any:
    return load_suite(write_suite(tmp_path, SUITE, cases()))


@pytest.fixture
def server(start_scripted_server: Any) -> ScriptedServer:
    return start_scripted_server(ScriptedServer(scripted_model))


def target(server: ScriptedServer, model: str = "good-model") -> Target:
    return Target(base_url=server.base_url, model=model, api_key="sk-test")


def test_run_scores_records_and_caches(suite: Any, server: ScriptedServer, tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "cache.sqlite")
    events = []
    run = run_suite(suite, target(server), cache=cache, progress=events.append)
    assert run.status == "completed" and server.calls == N_CASES
    assert run.suite_digest == suite.digest and run.dataset_digest == suite.dataset_digest
    assert run.target.cache_identity == f"{server.base_url}#good-model"
    assert "sk-test" not in run.model_dump_json()
    first = run.results[0].generations[0]
    assert first.prompt_tokens and first.completion_tokens and first.latency_s > 0
    assert server.requests[0]["seed"] == 1 and server.requests[0]["max_tokens"] == 8
    assert run.metrics["exact_match"].aggregate.value == pytest.approx(0.9)
    assert run.metrics["exact_match"].passed is True and run.passed is True
    assert run.metrics["cost"].aggregate.details["total"] > 0
    assert run.slices["big"].count == 20
    assert run.overall_score == pytest.approx((3 * 0.9 + run.metrics["rouge1"].aggregate.value) / 4)
    assert events[-1].phase == "score" and any(e.done == N_CASES for e in events)

    # The second run on the same identity generates nothing at all.
    again = run_suite(suite, target(server), cache=SQLiteCache(tmp_path / "cache.sqlite"))
    assert server.calls == N_CASES
    assert all(g.cached for r in again.results for g in r.generations)
    assert [r.outputs for r in again.results] == [r.outputs for r in run.results]
    assert again.metrics["exact_match"].aggregate == run.metrics["exact_match"].aggregate

    # Another model identity misses the cache; refresh and no_cache always generate.
    run_suite(suite, target(server, "mid-model"), cache=cache)
    assert server.calls == 2 * N_CASES
    run_suite(suite, target(server), cache=cache, options=RunOptions(refresh=True))
    assert server.calls == 3 * N_CASES
    memory = InMemoryCache()
    run_suite(suite, target(server), cache=memory, options=RunOptions(no_cache=True))
    assert server.calls == 4 * N_CASES and len(memory) == 0


def test_streaming_records_time_to_first_token(suite: Any, server: ScriptedServer) -> None:
    run = run_suite(suite, target(server), options=RunOptions(stream=True))
    assert run.status == "completed"
    generation = run.results[3].generations[0]
    assert (
        generation.output.strip()
        == scripted_model(
            server.requests[0]
            | {"messages": [{"content": "What is 3 + 3? Reply with the number only."}]}
        ).strip()
    )
    assert generation.ttft_s is not None and 0 < generation.ttft_s <= generation.latency_s
    assert generation.completion_tokens
    assert "ttft_p50" in run.metrics["latency"].aggregate.details


def test_a_failed_run_keeps_its_work_and_resumes(
    suite: Any, start_scripted_server: Any, tmp_path: Path
) -> None:
    server = start_scripted_server(ScriptedServer(scripted_model, fail_after=15))
    sink = JsonlSink(tmp_path / "runs")
    options = RunOptions(concurrency=1, max_retries=1, backoff_s=0.0)
    failed = run_suite(suite, target(server), options=options, sink=sink)
    assert failed.status == "failed"
    assert "InternalServerError after 2 attempts" in failed.error
    assert len(failed.results) == 15 and not failed.metrics
    partial = sink.load_generations(failed.run_id)
    assert len(partial) == 15
    assert load_run(tmp_path / "runs" / f"{failed.run_id}.json").status == "failed"

    server.fail_after = None
    calls_before = server.calls
    resumed = run_suite(suite, target(server), options=options, sink=sink, resume=failed)
    assert resumed.status == "completed" and resumed.run_id == failed.run_id
    assert server.calls - calls_before == N_CASES - 15
    assert len(resumed.results) == N_CASES
    assert resumed.metrics["exact_match"].aggregate.value == pytest.approx(0.9)
    # The sink's records alone resume a run whose process died.
    calls_before = server.calls
    from_records = run_suite(suite, target(server), options=options, resume=partial)
    assert from_records.status == "completed" and server.calls - calls_before == N_CASES - 15


def test_repeats_are_distinct_cache_entries(tmp_path: Path, server: ScriptedServer) -> None:
    path = write_suite(tmp_path, SUITE.replace("slices:", "repeats: 3\nslices:"), cases())
    suite = load_suite(path)
    run = run_suite(suite, target(server), cache=InMemoryCache())
    assert server.calls == 3 * N_CASES
    assert all(len(result.generations) == 3 for result in run.results)
    assert run.results[0].scores["exact_match"].details["repeats"] == [1.0, 1.0, 1.0]


def runs_for(suite: Any, server: ScriptedServer) -> dict[str, EvalRun]:
    cache = InMemoryCache()
    return {
        model: run_suite(suite, target(server, model), cache=cache)
        for model in ("good-model", "mid-model", "bad-model")
    }


def test_gate_decisions_better_equal_worse(
    suite: Any, server: ScriptedServer, tmp_path: Path
) -> None:
    runs = runs_for(suite, server)
    policy = GatePolicy(n_resamples=2000)
    baseline = runs["mid-model"]

    better = gate([(runs["good-model"], baseline)], policy)
    assert better.decision == "pass" and better.exit_code == 0
    em = better.suites[0].comparison.metrics["exact_match"]
    assert (
        em.test == "mcnemar"
        and em.difference == pytest.approx(accuracy("good-model") - accuracy("mid-model"))
        and em.ci_low > 0
    )

    equal = gate([(run_suite(suite, target(server, "mid-model")), baseline)], policy)
    assert equal.decision == "pass"
    assert equal.suites[0].comparison.metrics["exact_match"].ties == N_CASES
    # Nothing changed, but a small suite cannot rule out a drop of 2 points: the strict rule fails.
    strict = GatePolicy(n_resamples=2000, require_non_inferiority=True)
    unproven = gate([(run_suite(suite, target(server, "mid-model")), baseline)], strict)
    assert unproven.decision == "regression"
    em_check = next(
        c for c in unproven.suites[0].checks if (c.metric, c.kind) == ("exact_match", "regression")
    )
    assert not em_check.passed and "non-inferiority" in em_check.message
    assert gate([(runs["good-model"], baseline)], strict).decision == "pass"

    worse = gate([(runs["bad-model"], baseline)], policy)
    assert worse.decision == "regression" and worse.exit_code == 1
    failed = {c.metric for c in worse.suites[0].checks if not c.passed}
    assert failed == {"exact_match", "rouge1"}  # regression on both; threshold miss on em
    assert any("threshold" in reason for reason in worse.reasons)
    comparison = worse.suites[0].comparison
    assert comparison.regressions and comparison.regressions[0].baseline_output.isdigit()
    assert "maybe" in comparison.regressions[0].candidate_output
    assert set(comparison.slices["big"].metrics) == set(comparison.metrics)

    # Several suites in one gate: one regression fails the whole gate.
    both = gate([(runs["good-model"], baseline), (runs["bad-model"], baseline)], policy)
    assert both.decision == "regression" and len(both.suites) == 2

    xml = ElementTree.fromstring(junit_xml(worse))
    testcases = xml.findall(".//testcase")
    assert {case.get("name") for case in testcases} == {"exact_match", "rouge1", "latency", "cost"}
    assert xml.get("failures") == "2"
    assert {c.get("name") for c in testcases if c.find("failure") is not None} == {
        "exact_match",
        "rouge1",
    }
    summary = markdown_summary(worse)
    assert (
        "evalhub gate: REGRESSION" in summary
        and f"| exact_match | {accuracy('mid-model'):.4g} | {accuracy('bad-model'):.4g} |"
        in summary
    )
    assert "Cases that regressed most" in summary and "maybe" in summary

    path = tmp_path / "run.json"
    save_run(runs["bad-model"], path)
    assert load_run(path) == runs["bad-model"]
    assert json.loads(worse.model_dump_json())["decision"] == "regression"


def test_gate_errors_on_failed_runs_and_gates_thresholds_alone(
    suite: Any, server: ScriptedServer
) -> None:
    run = run_suite(suite, target(server, "mid-model"))
    broken = run.model_copy(update={"status": "failed", "error": "endpoint down"})
    result = gate([(broken, run)])
    assert result.decision == "error" and result.exit_code == 2
    assert "endpoint down" in result.reasons[0]
    assert gate([]).exit_code == 2
    alone = gate([(run, None)])
    assert alone.decision == "pass" and [c.kind for c in alone.suites[0].checks] == ["threshold"]
    strict = gate([(run, None)], GatePolicy(require_baseline=True))
    assert strict.decision == "error"
    latency_gate = gate([(run, run)], GatePolicy(margins={"latency": 0.0}, n_resamples=500))
    assert any(c.metric == "latency" for c in latency_gate.suites[0].checks)


def test_run_log_schema_version(suite: Any, server: ScriptedServer) -> None:
    run = run_suite(suite, target(server))
    data = json.loads(run.model_dump_json())
    assert data["schema_version"] == 1
    del data["schema_version"]
    assert EvalRun.model_validate(data).schema_version == 1
    with pytest.raises(ValueError, match="newer than this evalhub"):
        EvalRun.model_validate({**data, "schema_version": 99})
