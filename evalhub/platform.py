"""The running platform's parts, built once from Settings and shared by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from evalhub.audit import record_mutation
from evalhub.auth.tokens import TokenCache
from evalhub.db import migrate
from evalhub.jobs.queue import JobQueue
from evalhub.settings import Settings
from registry.artifacts import ArtifactStore
from registry.db import create_engine
from registry.store import RegistryStore


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    registry: RegistryStore
    jobs: JobQueue
    tokens: TokenCache

    @classmethod
    def open(cls, settings: Settings, *, upgrade: bool = True) -> Platform:
        settings.ensure_home()
        engine = create_engine(settings.resolved_database_url)
        if upgrade:
            migrate.upgrade(engine)
        artifacts = ArtifactStore(settings.resolved_artifact_url, cache_dir=settings.home / "cache")
        registry = RegistryStore(engine, artifacts, listeners=[record_mutation])
        return cls(
            settings=settings,
            engine=engine,
            registry=registry,
            jobs=JobQueue(engine),
            tokens=TokenCache(engine),
        )

    def close(self) -> None:
        self.engine.dispose()
