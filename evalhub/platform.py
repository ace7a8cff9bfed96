"""The running platform's parts, built once from Settings and shared by the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine

from evalhub.auth.tokens import Role, TokenCache
from evalhub.db import migrate
from evalhub.events import ChangeBus
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
    events: ChangeBus
    serving_key: str | None = field(default=None, repr=False)

    @classmethod
    def open(cls, settings: Settings, *, upgrade: bool = True) -> Platform:
        settings.ensure_home()
        engine = create_engine(settings.resolved_database_url)
        if upgrade:
            migrate.upgrade(engine)
        artifacts = ArtifactStore(
            settings.resolved_artifact_url,
            cache_dir=settings.home / "cache",
            storage_options=settings.resolved_artifact_options,
        )
        events = ChangeBus(engine)
        registry = RegistryStore(engine, artifacts, listeners=[events.record])
        key = settings.serving_api_key
        return cls(
            settings=settings,
            engine=engine,
            registry=registry,
            jobs=JobQueue(engine),
            tokens=TokenCache(engine),
            events=events,
            serving_key=key.get_secret_value() if key else None,
        )

    def serve_registry_models_at(self, url: str) -> None:
        """Registry references are evaluated through this server's own gateway at `url`.

        Its jobs call it with a viewer token that exists only in this process. An explicit
        EVALHUB_SERVING_URL wins.
        """
        if self.settings.serving_url:
            return
        self.settings = self.settings.model_copy(update={"serving_url": url})
        self.serving_key = self.tokens.internal("evalhub-jobs", Role.VIEWER)

    def close(self) -> None:
        self.events.close()
        self.engine.dispose()
