"""Schemathesis over the whole API of a real server (uvicorn on 127.0.0.1, SQLite and PostgreSQL):
every operation, a fixed seed, valid and invalid inputs from the OpenAPI document. No answer may
be a 5xx, and every answer must match what the document says: status, content type, headers and
body schema."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from evalhub.api.app import create_app
from evalhub.auth.tokens import create_token
from evalhub.platform import Platform
from evalhub.settings import Settings
from tests.conftest import DATABASES, postgres_schema
from tests.serving.conftest import free_socket

# Valid and invalid inputs per operation and database: 25 took twice as long in `make test` as
# 12, and 12 took 140 of the suite's 2,650 worker-seconds on CI's 2 cores.
EXAMPLES = 8

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


class Server:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module", params=DATABASES)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    import uvicorn

    home = tmp_path_factory.mktemp("schemathesis")
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{home / 'evalhub.db'}"])
    else:
        urls = postgres_schema()
    url = next(urls)
    platform = Platform.open(Settings(home=Path(home) / "home", database_url=url, _env_file=None))
    # A name no generated path parameter will hit: revoking it would end the run's authority.
    _, token = create_token(platform.engine, "schemathesis-admin-7f3a", "admin", actor="test")
    sock = free_socket()
    app = create_app(platform=platform)
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    yield Server(f"http://127.0.0.1:{sock.getsockname()[1]}", token)
    uv.should_exit = True
    thread.join(timeout=20)
    sock.close()
    platform.close()
    for _ in urls:  # drops the PostgreSQL schema
        pass


# The document the server serves; building the app opens nothing, so this is cheap at import.
# The event stream never ends by design; tests/api/test_events_api.py covers it.
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi()).exclude(
    operation_id="stream_events"
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the fixed seed: the same cases on every run
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_conforms_to_its_schema_and_never_answers_5xx(case: Any, server: Server) -> None:
    case.call_and_validate(base_url=server.url, headers=server.headers, checks=CHECKS)
