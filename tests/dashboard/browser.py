"""A real browser on the real dashboard: `evalhub dashboard` against the seeded server, driven by
Debian's chromium through Playwright (`executable_path`, never a browser download).

Under CI a missing browser fails the run; elsewhere the tests are skipped with the one command
that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from evalhub.child_server import INHERITED_SETTINGS, free_port

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium  (as root; `make test` does it on CI)"
SCREENSHOTS = Path(os.environ.get("EVALHUB_TEST_OUTPUT", "test-output")) / "screenshots"


def chromium() -> str:
    if os.path.exists(CHROMIUM) or shutil.which("chromium"):
        return CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need Debian's chromium under CI: {INSTALL}")
    pytest.skip(f"no chromium: {INSTALL}")


def start_dashboard(url: str, token: str) -> Iterator[str]:
    """`evalhub dashboard` on a free port against `url`, until the generator is closed."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_SETTINGS}
    env.update({"EVALHUB_URL": url, "EVALHUB_TOKEN": token})
    process = subprocess.Popen(
        [sys.executable, "-m", "evalhub", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{address}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                out = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"evalhub dashboard did not start:\n{out}")
            time.sleep(0.3)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def open_page(page: Any, address: str, path: str, expect: str, *, timeout: float = 60) -> None:
    """Opens a dashboard page and waits until `expect` is shown and the script has finished."""
    page.goto(f"{address}/{path}")
    page.get_by_text(expect, exact=False).first.wait_for(timeout=timeout * 1000)
    settle(page, timeout)


def settle(page: Any, timeout: float = 60) -> None:
    """Waits until Streamlit is no longer running the page's script."""
    deadline = time.monotonic() + timeout
    while page.locator('[data-testid="stStatusWidget"]').count():
        assert time.monotonic() < deadline, "the page is still running"
        time.sleep(0.2)
    page.wait_for_timeout(300)


def no_exception(page: Any) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
