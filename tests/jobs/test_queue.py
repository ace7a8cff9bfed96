"""The job queue on SQLite and PostgreSQL: durable submit, exclusive claims, cancel, requeue."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from evalhub.jobs import JobContext, JobDeferred, JobFailed, JobQueue, JobStatus, Worker
from registry.errors import ErrorCode, RegistryError


@pytest.fixture
def queue(platform) -> JobQueue:  # type: ignore[no-untyped-def]
    return platform.jobs


def test_jobs_are_claimed_once_in_order(queue: JobQueue) -> None:
    ids = [queue.submit("echo", {"n": i}, actor="alice").id for i in range(20)]
    assert queue.get(ids[0]).status is JobStatus.QUEUED

    def claim_all(worker: str) -> list[str]:
        claimed = []
        while (job := queue.claim(worker, ["echo"])) is not None:
            claimed.append(job.id)
        return claimed

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(claim_all, ["w1", "w2", "w3", "w4"]))
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 20
    assert queue.claim("w5", ["echo"]) is None
    assert queue.claim("w5", ["other"]) is None
    page = queue.search(kind="echo", limit=5)
    assert [j.id for j in page.data] == ids[::-1][:5] and page.next_page_token


def test_worker_runs_handlers_and_records_events(queue: JobQueue) -> None:
    def echo(context: JobContext) -> dict:
        context.event("working", data={"step": 1})
        if context.job.payload.get("fail"):
            raise ValueError("bad payload")
        return {"echo": context.job.payload["n"]}

    worker = Worker(queue, {"echo": echo}, heartbeat_seconds=0.05)
    good = queue.submit("echo", {"n": 7})
    bad = queue.submit("echo", {"n": 1, "fail": True})
    assert worker.run_once() and worker.run_once() and not worker.run_once()
    done = queue.get(good.id)
    assert done.status is JobStatus.SUCCEEDED and done.result == {"echo": 7}
    failed = queue.get(bad.id)
    assert failed.status is JobStatus.FAILED and "bad payload" in (failed.error or "")
    messages = [e.message for e in queue.events(good.id)]
    assert (
        messages[0] == "echo job created" and "working" in messages and messages[-1] == "succeeded"
    )


def test_a_failure_that_explains_itself_is_logged_without_a_traceback(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(context: JobContext) -> dict:
        if context.job.payload["explained"]:
            raise JobFailed("set EVALHUB_SOMETHING on the worker")
        raise KeyError("surprise")

    worker = Worker(queue, {"fail": fail})
    explained = queue.submit("fail", {"explained": True})
    surprise = queue.submit("fail", {"explained": False})
    with caplog.at_level("WARNING", logger="evalhub.jobs.worker"):
        assert worker.run_once() and worker.run_once()
    assert queue.get(explained.id).error == "JobFailed: set EVALHUB_SOMETHING on the worker"
    assert queue.get(surprise.id).error == "KeyError: 'surprise'"
    logged = {record.getMessage().split(":")[0]: record.getMessage() for record in caplog.records}
    assert logged[f"job {explained.id} failed"] == (
        f"job {explained.id} failed: set EVALHUB_SOMETHING on the worker"
    )
    assert "Traceback (most recent call last)" in logged[f"job {surprise.id} failed"]


def test_a_job_queued_in_this_process_wakes_its_idle_worker(queue: JobQueue) -> None:
    """A worker polling once an hour still starts a job this process queues, and stops when
    asked: it waits on the queue, not on the clock."""
    started = threading.Event()
    worker = Worker(queue, {"echo": lambda context: started.set()}, poll_seconds=3600).start()
    try:
        time.sleep(0.2)  # the worker has found nothing and waits
        queue.submit("echo", {})
        assert started.wait(30), "the queued job was not claimed"
    finally:
        stopping = threading.Thread(target=worker.stop)
        stopping.start()
        stopping.join(30)
        assert not stopping.is_alive(), "the worker did not stop while waiting for work"


def test_cancel_queued_and_running(queue: JobQueue) -> None:
    queued = queue.submit("slow", {})
    assert queue.cancel(queued.id).status is JobStatus.CANCELLED
    with pytest.raises(RegistryError) as caught:
        queue.cancel(queued.id)
    assert caught.value.code is ErrorCode.FAILED_PRECONDITION

    started = threading.Event()

    def slow(context: JobContext) -> dict:
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            context.check_cancelled()
            time.sleep(0.02)
        return {}

    running = queue.submit("slow", {})
    worker = Worker(queue, {"slow": slow}, heartbeat_seconds=0.05)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    assert started.wait(10)
    queue.cancel(running.id, actor="bob")
    thread.join(20)
    assert queue.get(running.id).status is JobStatus.CANCELLED
    assert any("bob" in e.message for e in queue.events(running.id))


def test_a_job_whose_worker_died_is_requeued_and_resumed(queue: JobQueue) -> None:
    job = queue.submit("train", {})
    claimed = queue.claim("dead-worker", ["train"])
    assert claimed is not None and claimed.attempts == 1
    # The worker dies: no heartbeat. Another worker requeues it once it is stale.
    assert queue.requeue_stale(timedelta(hours=1)) == []
    time.sleep(0.05)
    assert queue.requeue_stale(timedelta(milliseconds=10)) == [job.id]
    seen: list[bool] = []

    def train(context: JobContext) -> dict:
        seen.append(context.resumed)
        return {"ok": True}

    assert Worker(queue, {"train": train}).run_once()
    assert seen == [True] and queue.get(job.id).status is JobStatus.SUCCEEDED
    assert any("requeued" in e.message for e in queue.events(job.id))


def test_a_deferred_job_runs_after_the_jobs_queued_behind_it(queue: JobQueue) -> None:
    """An experiment-like job waits for jobs submitted after it: it steps aside, they run, then
    it runs again, and stepping aside is not counted as an attempt."""
    order: list[str] = []

    def waiting(context: JobContext) -> dict[str, int]:
        order.append(context.job.id)
        if queue.get("second").status is not JobStatus.SUCCEEDED:
            raise JobDeferred("waiting for second")
        return {"attempts": context.job.attempts}

    def plain(context: JobContext) -> None:
        order.append(context.job.id)

    queue.submit("waiting", {}, job_id="first")
    queue.submit("plain", {}, job_id="second")
    worker = Worker(queue, {"waiting": waiting, "plain": plain})
    while worker.run_once():
        pass
    assert order == ["first", "second", "first"]
    done = queue.get("first")
    assert done.status is JobStatus.SUCCEEDED and done.result == {"attempts": 1}
    assert "waiting for second" in [event.message for event in queue.events("first")]
