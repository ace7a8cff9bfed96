"""A worker: claims jobs of the kinds it has handlers for and runs them, heartbeating meanwhile.

Handlers get a JobContext: report events, check for cancellation, and learn whether this is a
resumed attempt. The interface is narrow on purpose, so that a Ray executor can slot in later.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from evalhub.jobs.queue import Job, JobQueue, JobStatus

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised by a handler (through JobContext.check_cancelled) to stop a cancelled job."""


class JobFailed(Exception):
    """A failure its message explains (a setting to make, resources the job lacks): the job's
    error says what to do, so the worker logs the message without a traceback."""


class JobDeferred(Exception):
    """Raised by a handler that must wait for jobs queued behind it: it goes back to the end of
    the queue (see `JobQueue.defer`), and its handler runs again from the start."""


@dataclass
class JobContext:
    job: Job
    queue: JobQueue
    worker_id: str
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def resumed(self) -> bool:
        return self.job.attempts > 1

    def event(
        self, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        self.queue.add_event(self.job.id, message, level=level, data=data)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()


Handler = Callable[[JobContext], dict[str, Any] | None]


class Worker:
    def __init__(
        self,
        queue: JobQueue,
        handlers: dict[str, Handler],
        *,
        worker_id: str | None = None,
        poll_seconds: float = 1.0,
        heartbeat_seconds: float = 5.0,
        stale_after: timedelta = timedelta(seconds=60),
    ) -> None:
        self.queue = queue
        self.handlers = handlers
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_after = stale_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Worker:
        self._thread = threading.Thread(target=self.run_forever, name="evalhub-worker", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30) -> None:
        self._stop.set()
        self.queue.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # a broken database must not kill the worker thread
                log.exception("worker loop failed")
                worked = False
            if not worked and not self._stop.is_set():
                self.queue.wait_for_work(self.poll_seconds)

    def run_once(self) -> bool:
        """Claims and runs at most one job; returns whether there was one."""
        self.queue.requeue_stale(self.stale_after)
        job = self.queue.claim(self.worker_id, self.handlers)
        if job is None:
            return False
        self.execute(job)
        return True

    def execute(self, job: Job) -> None:
        context = JobContext(job=job, queue=self.queue, worker_id=self.worker_id)
        beating = threading.Event()

        def beat() -> None:
            while not beating.wait(self.heartbeat_seconds):
                try:
                    if self.queue.heartbeat(job.id, self.worker_id):
                        context._cancel.set()
                except Exception:
                    log.exception("heartbeat failed for %s", job.id)

        if self.queue.heartbeat(job.id, self.worker_id):
            context._cancel.set()
        heart = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        heart.start()
        try:
            result = self.handlers[job.kind](context)
        except JobCancelled:
            self.queue.finish(job.id, JobStatus.CANCELLED, message="cancelled")
        except JobDeferred as deferred:
            self.queue.defer(job.id, str(deferred) or "waiting for the jobs queued after it")
        except Exception as error:
            detail = str(error) if isinstance(error, JobFailed) else traceback.format_exc()
            log.warning("job %s failed: %s", job.id, detail)
            self.queue.finish(job.id, JobStatus.FAILED, error=f"{type(error).__name__}: {error}")
        else:
            self.queue.finish(job.id, JobStatus.SUCCEEDED, result=result)
        finally:
            beating.set()
            heart.join()
