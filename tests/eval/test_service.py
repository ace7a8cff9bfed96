"""The eval service on SQLite and PostgreSQL: runs as jobs against a scripted OpenAI-compatible
server on 127.0.0.1, stored runs and cases, the database cache, resume, lineage."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from evalhub.eval.service import EvalRequest, EvalService, eval_handler
from evalhub.eval.store import DatabaseCache, EvalStore
from evalhub.jobs.queue import JobStatus
from evalhub.jobs.worker import JobContext, Worker
from evalhub.platform import Platform
from registry.errors import RegistryError
from tests.eval.scripted_capitals import N_CASES, request_body, scripted_capitals
from tests.scripted_server import ScriptedServer


def run_queued_job(platform: Platform) -> None:
    worker = Worker(platform.jobs, {"eval": eval_handler(platform)})
    assert worker.run_once(), "no eval job was queued"


def start(platform: Platform, model: str, endpoint: str | None, **options) -> str:  # type: ignore[no-untyped-def]
    request = EvalRequest.model_validate(request_body(model, endpoint, **options))
    return EvalService(platform).start(request, actor="tester").run.id


def test_run_as_job_stores_run_and_cases_and_a_second_run_generates_nothing(
    platform: Platform, start_scripted_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    service = EvalService(platform)
    first = start(platform, "base-model", scripted.base_url)
    assert service.store.get(first).status == "queued"
    # A follower that sees the run finished reads its events next: the last must be there.
    last_event_at_finish: list[str] = []
    finish = EvalStore.finish

    def recording_finish(store: EvalStore, run):  # type: ignore[no-untyped-def]
        last_event_at_finish.append(service.events(run.run_id)[-1].message)
        return finish(store, run)

    monkeypatch.setattr(EvalStore, "finish", recording_finish)
    run_queued_job(platform)
    info = service.store.get(first)
    assert info.status == "completed", info.error
    assert last_event_at_finish[0].startswith("run completed: exact_match="), last_event_at_finish
    assert scripted.calls == N_CASES
    assert info.metrics["exact_match"]["value"] == pytest.approx((N_CASES - 2) / N_CASES)
    assert info.metrics["exact_match"]["passed"] is True
    assert info.cache_identity == f"{scripted.base_url}#base-model"
    assert info.model_version is None and info.case_count == N_CASES

    cases = service.store.cases(first, limit=10)
    assert len(cases.data) == 10 and cases.next_page_token
    rest = service.store.cases(first, limit=100, page_token=cases.next_page_token)
    by_case = {case.case_id: case for case in cases.data + rest.data}
    assert len(by_case) == N_CASES
    assert by_case["br"].output == "I am not sure." and by_case["br"].scores is not None
    assert by_case["br"].scores["exact_match"]["value"] == 0.0
    assert by_case["fr"].scores["exact_match"]["value"] == 1.0
    assert by_case["fr"].prompt_tokens and by_case["fr"].latency_s is not None

    second = start(platform, "base-model", scripted.base_url)
    run_queued_job(platform)
    assert service.store.get(second).status == "completed"
    assert scripted.calls == N_CASES, "the second run must come from the database cache"
    assert all(case.cached for case in service.store.cases(second).data)

    comparison = service.compare(first, second)
    assert comparison.shared_cases == N_CASES
    assert comparison.metrics["exact_match"].difference == 0
    messages = [event.message for event in service.events(second)]
    assert any(message.startswith("generate 16/16") for message in messages), messages
    assert [run.id for run in service.store.search().data] == [second, first]


def test_registry_target_is_pinned_to_its_digest_and_listed_in_lineage(
    platform: Platform, start_scripted_server, tmp_path: Path
) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    save_file(
        {"lm_head.weight": np.zeros((4, 4), np.float32)}, str(model_dir / "model.safetensors")
    )
    platform.registry.create_model("tiny", "base")
    version = platform.registry.register_version("tiny", model_dir)
    platform.registry.set_alias("tiny", "candidate", 1)

    with pytest.raises(RegistryError) as refused:
        start(platform, "tiny@candidate", None)
    assert "--endpoint" in refused.value.message and "tiny/1" in refused.value.message
    assert EvalService(platform).store.search().data == []

    platform.settings.serving_url = scripted.base_url
    run_id = start(platform, "tiny@candidate", None)
    run_queued_job(platform)
    info = EvalService(platform).store.get(run_id)
    assert info.status == "completed", info.error
    assert (info.model, info.model_version, info.model_digest) == (
        "tiny@candidate",
        "tiny/1",
        version.digest,
    )
    assert info.cache_identity == version.digest
    assert {body["model"] for body in scripted.requests} == {"tiny/1"}
    lineage = platform.registry.lineage("tiny", 1)
    edges = [(e.relation, e.target_kind, e.target_id) for e in lineage.downstream]
    assert ("evaluated_in", "eval_run", run_id) in edges


class WorkerDied(Exception):
    """Stands for the worker process dying in the middle of a run."""


def test_a_run_whose_worker_died_resumes_without_recomputing_stored_cases(
    platform: Platform, start_scripted_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals))
    # No cache and one generation at a time: whatever is skipped on resume was skipped
    # because it was stored, and the call counts are exact.
    run_id = start(platform, "good-model", scripted.base_url, no_cache=True, concurrency=1)
    stored = {"count": 0}
    original = EvalStore.add_generation

    def dying(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        stored["count"] += 1
        if stored["count"] == 5:
            raise WorkerDied()

    monkeypatch.setattr(EvalStore, "add_generation", dying)
    job = platform.jobs.claim("doomed-worker", ["eval"])
    assert job is not None
    with pytest.raises(WorkerDied):
        eval_handler(platform)(JobContext(job=job, queue=platform.jobs, worker_id="doomed-worker"))
    monkeypatch.setattr(EvalStore, "add_generation", original)
    calls_before = scripted.calls  # 5 stored, perhaps one more in flight when it died
    assert 5 <= calls_before <= 6
    assert platform.jobs.get(job.id).status == JobStatus.RUNNING  # nobody finished it

    assert platform.jobs.requeue_stale(timedelta(seconds=0)) == [job.id]
    run_queued_job(platform)
    assert platform.jobs.get(job.id).status == JobStatus.SUCCEEDED
    info = EvalService(platform).store.get(run_id)
    assert info.status == "completed" and info.metrics["exact_match"]["value"] == 1.0
    assert scripted.calls - calls_before == N_CASES - 5, "stored generations were redone"
    assert len(EvalStore(platform.engine).generations(run_id)) == N_CASES
    messages = [event.message for event in EvalService(platform).events(run_id)]
    assert "resuming: 5 generation(s) already stored" in messages


def test_a_failed_run_says_why_keeps_its_work_and_resumes(
    platform: Platform, start_scripted_server
) -> None:
    scripted = start_scripted_server(ScriptedServer(scripted_capitals, fail_after=6))
    service = EvalService(platform)
    run_id = start(platform, "good-model", scripted.base_url, concurrency=1, max_retries=0)
    run_queued_job(platform)
    info = service.store.get(run_id)
    assert info.status == "failed" and "InternalServerError" in (info.error or "")
    job = platform.jobs.get(info.job_id or "")
    assert job.status == JobStatus.FAILED and run_id in (job.error or "")
    assert len(service.store.generations(run_id)) == 6

    scripted.fail_after = None
    resumed = service.resume(run_id, actor="tester")
    assert resumed.job_id != job.id
    run_queued_job(platform)
    assert service.store.get(run_id).status == "completed"
    assert scripted.calls == N_CASES + 1  # the one failed call, then only the missing cases
    with pytest.raises(RegistryError, match="not failed"):
        service.resume(run_id, actor="tester")


def test_database_cache_overwrites_on_refresh(platform: Platform) -> None:
    cache = DatabaseCache(platform.engine)
    assert cache.get("k") is None
    cache.put("k", {"output": "one"})
    cache.put("k", {"output": "two"})
    assert cache.get("k") == {"output": "two"}
    assert (cache.hits, cache.misses) == (1, 1)
