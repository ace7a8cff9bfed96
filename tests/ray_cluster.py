"""A real Ray head on 127.0.0.1 with 2 CPUs, shared by the Ray tests (the xdist group "ray"), so
that one worker starts one head for all of them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from evalhub.child_server import free_port

INSTALL = "pip install -e '.[ray]' (`make install` includes it)"


def ray_command() -> str:
    """The `ray` CLI beside this Python; a missing extra fails the test with what to install."""
    command = Path(sys.executable).with_name("ray")
    if importlib.util.find_spec("ray") is None or not command.is_file():
        pytest.fail(f"the Ray tests need the ray extra: {INSTALL}")
    return str(command)


@dataclass
class RayHead:
    address: str
    node_ip: str  # Ray names a node by an address others can reach, not 127.0.0.1


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """`ray start --head` on 127.0.0.1 with 2 CPUs, for the session's Ray tests; its address.
    Stopped through its own process (group), never `ray stop`, which stops every Ray on the
    machine."""
    ray = ray_command()
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    port = free_port()
    log = Path(temp) / "head.log"
    command = [
        ray, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
        "--include-dashboard=false", "--dashboard-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", temp,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as output:
        head = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        node_ip = re.search(r"Local node IP: (\S+)", log.read_text())
        assert node_ip is not None, log.read_text()
        yield RayHead(f"127.0.0.1:{port}", node_ip.group(1))
    finally:
        head.terminate()  # `ray start --block` stops the processes it started, in time
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # a throwaway cluster: what is left goes now
        shutil.rmtree(temp, ignore_errors=True)
