"""Running a job's work on a Ray cluster: the `ray` extra and EVALHUB_RAY_ADDRESS.

The evalhub job stays the system of record. The worker that claimed the job connects to the
cluster for the job's duration and starts the work there; what the Ray workers report travels
through an `EventChannel` actor, and the handler turns it into the job's events. Cancelling the
job stops the Ray workers at their next report; a worker that dies takes its Ray work with it
(Ray ends a driver's actors when the driver goes), and the job is requeued like any other.

Files travel through Ray's object store (`pack_directory`), so the cluster's nodes share no disk
with evalhub; they need evalhub installed, since its code is what runs there.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, TypeVar

from evalhub.jobs.worker import JobContext, JobFailed

INSTALL = "pip install 'evalhub[ray]'"
CONNECT_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.5
# How long a cancelled run may take to reach its next report before the driver lets go (its
# disconnection then ends the run's actors).
STOP_GRACE_SECONDS = 60.0

T = TypeVar("T")
Event = dict[str, Any]

_lock = threading.Lock()
_connections = 0


class RayUnavailable(JobFailed):
    """The job asked for Ray and this worker has no cluster to give it."""


class RayRunStopped(Exception):
    """Raised on a Ray worker when the job it works for was cancelled or failed in evalhub."""


def cluster_address(address: str | None) -> str:
    """`address` checked: `host:port`, and something listens there."""
    if not address:
        raise RayUnavailable(
            "executor 'ray' needs EVALHUB_RAY_ADDRESS on the worker that runs the job: the Ray "
            "head's host:port, as `ray start --head` prints it"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"EVALHUB_RAY_ADDRESS={address!r} is not host:port")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as error:
        raise RayUnavailable(
            f"no Ray cluster answers at {address} (EVALHUB_RAY_ADDRESS): {error}; start one with "
            f"`ray start --head --port {port}` or correct the address"
        ) from None
    return address


@contextmanager
def connected(address: str | None) -> Iterator[ModuleType]:
    """The `ray` module, connected to the cluster at `address` while the block runs.

    One connection per process, shared by the jobs that run in it at the same time; the last
    one out disconnects, which ends whatever Ray work is left of them.
    """
    global _connections
    try:
        import ray
    except ImportError:
        raise RayUnavailable(
            f"executor 'ray' needs the ray extra on the worker: {INSTALL}"
        ) from None
    address = cluster_address(address)
    with _lock:
        if _connections == 0:
            # Ray workers' output stays in the cluster's logs; what matters comes as events.
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        _connections += 1
    try:
        yield ray
    finally:
        with _lock:
            _connections -= 1
            if _connections == 0:
                ray.shutdown()


class EventChannel:
    """A Ray actor between the Ray workers and the job's handler: workers report events in
    order and learn whether to stop; the handler takes the events and asks them to stop."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._stopped = False

    def report(self, event: Event) -> bool:
        self._events.append(event)
        return self._stopped

    def take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def stop(self) -> None:
        self._stopped = True


def new_channel(ray: ModuleType) -> Any:
    """An `EventChannel` actor; it takes no CPU, so it never waits for the work's resources."""
    return ray.remote(num_cpus=0)(EventChannel).remote()


def report(channel: Any, event: Event) -> None:
    """On a Ray worker: hands `event` to the job; raises RayRunStopped when the job says stop."""
    import ray

    if ray.get(channel.report.remote(event)):
        raise RayRunStopped("the evalhub job stopped this run")


def drive(
    context: JobContext, channel: Any, run: Callable[[], T], on_event: Callable[[Event], None]
) -> T:
    """Calls `run` (which returns when the Ray work ends) in a thread, handing the channel's
    events to `on_event` in order meanwhile. When the job is cancelled, or `on_event` raises,
    the Ray workers are told to stop and the exception goes on once `run` has returned (or
    STOP_GRACE_SECONDS have passed)."""
    import ray

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = run()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, name=f"ray-{context.job.id}", daemon=True)
    thread.start()
    try:
        while True:
            finished = not thread.is_alive()
            for event in ray.get(channel.take.remote()):
                on_event(event)
            context.check_cancelled()
            if finished:
                break
            thread.join(POLL_SECONDS)
    except BaseException:
        channel.stop.remote()
        thread.join(STOP_GRACE_SECONDS)
        raise
    if "error" in outcome:
        raise outcome["error"]
    value: T = outcome["value"]
    return value


def pack_directory(directory: Path) -> dict[str, bytes]:
    """A directory's files by relative path: what travels to and from the cluster."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def unpack_directory(files: dict[str, bytes], directory: Path) -> Path:
    """Writes packed files to `directory`, replacing what was there, all or nothing."""
    staging = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, content in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"refusing to write {name!r} outside {directory}")
        target = staging.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory
