"""`evalhub serve` in a child process on a free port: for tests, benchmarks and scripted demos.

Reads the server's output until it is up, keeps the admin token it prints on a fresh home, and
keeps draining the output afterwards (a full pipe would block the server) with its tail at hand
for error messages.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TOKEN = re.compile(r"(ehk_[A-Za-z0-9_-]+)")
# What the child must not take from the parent's environment: it has a home of its own.
INHERITED_SETTINGS = ("EVALHUB_URL", "EVALHUB_TOKEN", "EVALHUB_DATABASE_URL", "EVALHUB_ADMIN_TOKEN")


@dataclass
class ChildServer:
    url: str
    token: str | None
    env: dict[str, str]
    process: subprocess.Popen[str]
    output: deque[str]

    def tail(self) -> str:
        return "".join(self.output)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def child_server(
    home: Path,
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 120,
    port: int | None = None,
) -> Iterator[ChildServer]:
    """`evalhub serve` on EVALHUB_HOME=`home` (plus `env`) on `port` (a free one if None),
    stopped when the block ends."""
    port = port or free_port()
    child_env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS}
    child_env.update({"EVALHUB_HOME": str(home), "OMP_NUM_THREADS": "1", **(env or {})})
    process = subprocess.Popen(
        [sys.executable, "-m", "evalhub", "serve", "--port", str(port)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: deque[str] = deque(maxlen=60)
    try:
        assert process.stdout is not None
        token = None
        deadline = time.monotonic() + timeout
        while True:
            line = process.stdout.readline()
            output.append(line)
            if not line and process.poll() is not None:
                raise RuntimeError("evalhub serve exited:\n" + "".join(output))
            if time.monotonic() > deadline:
                raise RuntimeError(f"evalhub serve not up after {timeout} s:\n" + "".join(output))
            found = TOKEN.search(line)
            token = token or (found.group(1) if found else None)
            # uvicorn logs "Application startup complete" before it binds the port: a request
            # in between was refused on a busy machine.
            if "Uvicorn running on" in line:
                break
        threading.Thread(target=lambda: output.extend(process.stdout or ()), daemon=True).start()
        yield ChildServer(f"http://127.0.0.1:{port}", token, child_env, process, output)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
