"""Backends on demand: concurrent first requests share one real local backend start; a base that
cannot start answers 503 and is not retried until the retry time has passed; the setting is on for
the embedded SQLite home only. (The whole flow, an `ft:` id answering with no backend command, is
tested with the `openai` client in tests/finetune/test_openai_api.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evalhub import composition
from evalhub.platform import Platform
from evalhub.serving.backends import BackendService
from evalhub.serving.gateway_errors import GatewayError
from evalhub.serving.on_demand import NoBackend, OnDemandBackends
from evalhub.serving.supervisor import Supervisor
from evalhub.settings import Settings
from tests.serving.conftest import Models


@pytest.fixture
def backends(tmp_path: Path, models: Models) -> Iterator[BackendService]:
    platform = Platform.open(Settings(home=tmp_path / "home", _env_file=None))
    supervisor = Supervisor(tmp_path / "logs")
    try:
        platform.registry.create_model("tiny", "base")
        platform.registry.register_version("tiny", models.base)
        yield BackendService(platform, supervisor)
    finally:
        supervisor.close()
        platform.close()


def missing(backends: BackendService, ref: str) -> NoBackend:
    version = backends.platform.registry.resolve(ref)
    return NoBackend(f"no backend serves {ref}", version.ref, version.digest)


def test_concurrent_first_requests_start_one_healthy_backend(backends: BackendService) -> None:
    on_demand = OnDemandBackends(backends, retry_seconds=30)

    async def three_requests() -> list[str]:
        wanted = missing(backends, "tiny/1")
        started = await asyncio.gather(*(on_demand.ensure(wanted) for _ in range(3)))
        return [backend.name for backend in started]

    assert asyncio.run(three_requests()) == ["auto-tiny-1"] * 3
    (backend,) = backends.list()
    assert backend.managed and backend.kind == "local" and backend.base == "tiny/1"
    assert backend.created_by == "gateway:on-demand"
    health = httpx.get(f"{backend.urls[0].removesuffix('/v1')}/health", timeout=5)
    assert health.is_success
    # A later request finds the running backend rather than starting another.
    assert asyncio.run(on_demand.ensure(missing(backends, "tiny/1"))).name == "auto-tiny-1"
    assert len(backends.list()) == 1


def test_a_failed_start_answers_503_and_waits_before_trying_again(
    backends: BackendService, model_dirs: dict[str, Path]
) -> None:
    # Weights without a tokenizer: it registers, and its backend process exits at start.
    backends.platform.registry.create_model("broken", "base")
    backends.platform.registry.register_version("broken", model_dirs["base"])
    attempts: list[str] = []
    create = backends.create

    def counted(body, *, actor):  # type: ignore[no-untyped-def]
        attempts.append(body.name)
        return create(body, actor=actor)

    backends.create = counted  # type: ignore[method-assign]
    on_demand = OnDemandBackends(backends, retry_seconds=3600)
    wanted = missing(backends, "broken/1")
    for _ in range(2):
        with pytest.raises(GatewayError) as refused:
            asyncio.run(on_demand.ensure(wanted))
        assert refused.value.status == 503
        assert "starting one on demand failed" in refused.value.message
        assert "evalhub backend local --base broken/1" in refused.value.message
    assert attempts == ["auto-broken-1"]  # the second request did not start another process
    assert backends.list() == []

    with pytest.raises(GatewayError):  # once the retry time has passed, it tries again
        asyncio.run(OnDemandBackends(backends, retry_seconds=0).ensure(wanted))
    assert attempts == ["auto-broken-1"] * 2


@pytest.mark.parametrize(
    ("database_url", "auto_backend", "on"),
    [
        (None, "auto", True),
        ("postgresql+psycopg://127.0.0.1/test", "auto", False),
        ("postgresql+psycopg://127.0.0.1/test", True, True),
        (None, False, False),
    ],
)
def test_on_by_default_on_the_embedded_home_only(
    tmp_path: Path, database_url: str | None, auto_backend: object, on: bool
) -> None:
    settings = Settings(
        home=tmp_path, database_url=database_url, auto_backend=auto_backend, _env_file=None
    )
    assert settings.auto_backend_enabled is on


def test_a_process_that_supervises_no_backends_keeps_the_503(tmp_path: Path) -> None:
    platform = Platform.open(Settings(home=tmp_path / "home", _env_file=None))
    try:
        assert composition.on_demand_backends(BackendService(platform, None)) is None
        supervisor = Supervisor(tmp_path / "logs")
        assert composition.on_demand_backends(BackendService(platform, supervisor)) is not None
        supervisor.close()
    finally:
        platform.close()
