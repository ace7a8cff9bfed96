"""The FastAPI app factory: the REST API under /api/v1, probes and metrics at the root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from evalhub import __version__
from evalhub.api import errors
from evalhub.api.middleware import BodySizeLimit, PrometheusMetrics
from evalhub.api.routes import admin, aliases, datasets, health, models
from evalhub.auth.tokens import Principal
from evalhub.jobs.handlers import default_handlers
from evalhub.jobs.worker import Worker
from evalhub.platform import Platform
from evalhub.settings import Settings

API_PREFIX = "/api/v1"


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids: the route function's name (clients are generated from them)."""
    return route.name


def create_app(
    settings: Settings | None = None,
    *,
    platform: Platform | None = None,
    local_principal: Principal | None = None,
    run_worker: bool = False,
) -> FastAPI:
    """`local_principal` skips token checks: the CLI's in-process mode on the user's own home.

    `run_worker` runs a job worker in the server process (what `evalhub serve` does by default).
    """
    settings = settings or (platform.settings if platform else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = app.state.platform is None
        if owned:
            app.state.platform = Platform.open(settings)
        worker = None
        if run_worker:
            worker = Worker(app.state.platform.jobs, default_handlers()).start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            if owned:
                app.state.platform.close()
                app.state.platform = None

    app = FastAPI(
        title="evalhub",
        version=__version__,
        description="Train, register, serve, evaluate, gate, roll out and roll back LLM adapters.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.platform = platform
    app.state.local_principal = local_principal
    app.state.metrics = CollectorRegistry()

    api = APIRouter(prefix=API_PREFIX)
    for module in (models, aliases, datasets, admin):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(health.router)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(PrometheusMetrics, registry=app.state.metrics)
    return app
