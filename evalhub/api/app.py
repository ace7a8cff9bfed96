"""The FastAPI app factory: the REST API under /api/v1, probes and metrics at the root."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from evalhub import __version__, composition
from evalhub.api import errors, openapi
from evalhub.api import openai as openai_api
from evalhub.api.middleware import BodySizeLimit, PrometheusMetrics
from evalhub.api.routes import (
    admin,
    alerts,
    aliases,
    annotation_queues,
    datasets,
    evals,
    events,
    experiments,
    finetune,
    gateway,
    health,
    models,
    monitoring,
    quality,
    reproductions,
    serving,
)
from evalhub.auth.tokens import Principal
from evalhub.monitoring.prometheus import MonitoringCollector
from evalhub.platform import Platform
from evalhub.serving.backends import BackendService
from evalhub.serving.gateway import Gateway
from evalhub.serving.supervisor import Supervisor
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
    supervise: bool = False,
    monitor: bool = False,
) -> FastAPI:
    """`local_principal` skips token checks: the CLI's in-process mode on the user's own home.

    `run_worker` runs a job worker in the server process (what `evalhub serve` does by default);
    `supervise` lets it start and restart managed backend processes; `monitor` runs the
    scheduled monitor passes (online scoring, the rollout controller).
    """
    settings = settings or (platform.settings if platform else Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = app.state.platform is None
        if owned:
            app.state.platform = composition.open_platform(settings)
        worker = None
        if run_worker:
            worker = composition.worker(app.state.platform).start()
        platform_ = app.state.platform
        supervisor = Supervisor(platform_.settings.home / "logs") if supervise else None
        app.state.backends = BackendService(platform_, supervisor)
        app.state.gateway = Gateway(
            platform_,
            app.state.backends,
            metrics=app.state.metrics,
            on_demand=composition.on_demand_backends(app.state.backends),
        )
        await app.state.gateway.start()
        monitoring = MonitoringCollector(platform_)
        app.state.metrics.register(monitoring)
        if supervisor is not None:
            await asyncio.to_thread(app.state.backends.restart_managed)
        scheduler = (
            composition.monitor_scheduler(platform_, app.state.gateway.traffic.flush)
            if monitor
            else None
        )
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            app.state.metrics.unregister(monitoring)
            if scheduler is not None:
                scheduler.stop()
            await app.state.gateway.close()
            if supervisor is not None:
                supervisor.close()
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
        # FastAPI's OpenTelemetry hooks cost a tenth of the gateway's time per request; evalhub
        # exports Prometheus metrics and keeps its own traffic log instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.platform = platform
    app.state.local_principal = local_principal
    app.state.metrics = CollectorRegistry()

    api = APIRouter(prefix=API_PREFIX)
    for module in (
        models,
        aliases,
        datasets,
        evals,
        finetune,
        experiments,
        reproductions,
        serving,
        monitoring,
        quality,
        alerts,
        annotation_queues,
        events,
        admin,
    ):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(openai_api.router)
    app.include_router(gateway.router)
    app.include_router(health.router)
    errors.install(app)
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(PrometheusMetrics, registry=app.state.metrics)
    return app
