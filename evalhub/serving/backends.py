"""Backends as resources: managed processes evalhub starts, or servers it attaches to by URL."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from evalhub.platform import Platform
from evalhub.serving.supervisor import (
    Supervisor,
    check_vllm_args,
    free_port,
    gpus_per_replica,
    local_backend_spec,
    replica_gpus,
    vllm_backend_spec,
    wait_healthy,
)
from evalhub.serving.tables import BackendRow, DeploymentRow
from registry.db import writer
from registry.entities import ModelKind, Mutation
from registry.errors import ErrorCode, RegistryError, already_exists, invalid, not_found
from registry.names import check_name

BackendKind = Literal["local", "vllm"]


class BackendOptions(BaseModel):
    """What a request may set on a backend; the command line itself is the operator's."""

    model_config = ConfigDict(extra="forbid")

    port: int | None = Field(default=None, ge=1024, le=65535, description="first replica's port")
    max_loras: int | None = Field(default=None, ge=1, le=256)
    max_lora_rank: int | None = Field(default=None, ge=1, le=1024)
    max_cpu_loras: int | None = Field(default=None, ge=1, le=4096)
    args: list[str] | None = Field(
        default=None, max_length=64, description="more vLLM arguments: sizes and switches"
    )
    served_model_name: str | None = Field(
        default=None, max_length=160, description="attached: the base model's name there"
    )


class BackendCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    kind: BackendKind = "local"
    base: str = Field(
        max_length=256, description="the base model version it serves, e.g. tiny@production"
    )
    managed: bool = Field(default=True, description="evalhub starts and supervises the process")
    replicas: int = Field(default=1, ge=1, le=16, description="managed: processes to start")
    url: str | None = Field(default=None, description="for managed=false: the server's base URL")
    urls: list[str] | None = Field(
        default=None, description="for managed=false: several replicas' base URLs"
    )
    options: BackendOptions = Field(default_factory=BackendOptions)


class Backend(BaseModel):
    name: str
    kind: BackendKind
    managed: bool
    urls: list[str] = Field(description="one base URL per replica")
    base: str
    base_digest: str
    served_name: str
    options: dict[str, Any]
    created_at: datetime
    created_by: str
    status: str = "unknown"
    pids: list[int] = Field(default_factory=list)
    restarts: int = 0

    @property
    def url(self) -> str:
        return self.urls[0]


def normalise_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise invalid(f"backend url {url!r} must start with http:// or https://")
    return url if url.endswith("/v1") else f"{url}/v1"


class BackendService:
    def __init__(self, platform: Platform, supervisor: Supervisor | None) -> None:
        self.platform = platform
        self.supervisor = supervisor

    def create(self, body: BackendCreate, *, actor: str) -> Backend:
        check_name(body.name, "backend")
        options = body.options.model_dump(exclude_none=True)
        if "args" in options:
            check_vllm_args(options["args"])
        with Session(self.platform.engine) as session:
            if session.exec(select(BackendRow).where(BackendRow.name == body.name)).first():
                raise already_exists(f"backend {body.name!r} already exists")
        version = self.platform.registry.resolve(body.base)
        if version.kind is not ModelKind.BASE:
            raise invalid(
                f"{version.ref} is an adapter; a backend serves a base model version "
                f"(this adapter's base is {version.base})"
            )
        served_name = version.ref
        if body.managed:
            if body.url or body.urls:
                raise invalid("a managed backend gets its URLs from evalhub; omit 'url' and 'urls'")
            urls = self._start(
                body.name, body.kind, version.digest, served_name, options, body.replicas
            )
        else:
            given = body.urls or ([body.url] if body.url else [])
            if not given:
                raise invalid("an attached backend (managed=false) needs its 'url' or 'urls'")
            urls = [normalise_url(url) for url in given]
            served_name = options.get("served_model_name", served_name)
            for url in urls:
                self._check_serves(url, served_name)
        row = BackendRow(
            name=body.name,
            kind=body.kind,
            managed=body.managed,
            urls=urls,
            base_ref=version.ref,
            base_digest=version.digest,
            served_name=served_name,
            options=options,
            created_by=actor,
        )
        try:
            with Session(writer(self.platform.engine), expire_on_commit=False) as session:
                session.add(row)
                session.flush()
                backend = self._entity(row)
                self.platform.events.record(
                    session,
                    Mutation(
                        actor=actor,
                        action="backend.create",
                        resource=f"backends/{body.name}",
                        after=backend.model_dump(mode="json"),
                    ),
                )
                session.commit()
        except BaseException:
            if body.managed:
                self._stop(body.name, len(urls))
            raise
        return backend

    def restart_managed(self) -> None:
        """At server start: managed backends died with the previous server; start them again.

        One that answers healthy on every URL is left as it is: another `evalhub serve` on this
        database runs it, and starting a copy would take its URLs from that server's processes.
        """
        for backend in self.list():
            if backend.managed and self.with_status(backend).status != "healthy":
                urls = self._start(
                    backend.name, backend.kind, backend.base_digest, backend.served_name,
                    backend.options, len(backend.urls),
                )  # fmt: skip
                with Session(self.platform.engine) as session:
                    row = session.exec(
                        select(BackendRow).where(BackendRow.name == backend.name)
                    ).one()
                    row.urls = urls
                    session.add(row)
                    session.commit()

    def _start(
        self,
        name: str,
        kind: str,
        digest: str,
        served_name: str,
        options: dict[str, Any],
        replicas: int,
    ) -> list[str]:
        """Starts every replica (process `name-0`, `name-1`, ...) and returns their URLs."""
        supervisor = self.supervisor
        if supervisor is None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                "this process does not supervise backends; run 'evalhub serve' or attach one by url",
            )
        settings = self.platform.settings
        # A request's sizes and switches follow the operator's arguments: the later flag wins.
        extra_args = [*settings.vllm_args, *check_vllm_args(options.get("args", []))]
        gpus = (
            replica_gpus(settings.vllm_gpus, gpus_per_replica(extra_args), replicas)
            if kind == "vllm"
            else []
        )
        model_dir = self.platform.registry.artifacts.materialize(digest)
        urls: list[str] = []
        try:
            for index in range(replicas):
                port = int(options["port"]) + index if options.get("port") else free_port()
                process = _replica(name, index)
                if kind == "local":
                    spec = local_backend_spec(process, model_dir, served_name, port)
                else:
                    spec = vllm_backend_spec(
                        process,
                        model_dir,
                        served_name,
                        port,
                        python=settings.vllm_python,
                        entrypoint=settings.vllm_command,
                        max_loras=int(options.get("max_loras", settings.vllm_max_loras)),
                        max_lora_rank=int(
                            options.get("max_lora_rank", settings.vllm_max_lora_rank)
                        ),
                        max_cpu_loras=int(
                            options.get("max_cpu_loras", settings.vllm_max_cpu_loras)
                        ),
                        extra_args=extra_args,
                        gpus=gpus[index],
                    )
                urls.append(supervisor.start(spec))
        except BaseException:
            self._stop(name, len(urls) + 1)
            raise
        return urls

    def _stop(self, name: str, replicas: int) -> None:
        if self.supervisor is not None:
            for index in range(replicas):
                self.supervisor.stop(_replica(name, index))

    @staticmethod
    def _check_serves(url: str, served_name: str) -> None:
        try:
            response = httpx.get(f"{url}/models", timeout=5)
            response.raise_for_status()
            names = [model["id"] for model in response.json().get("data", [])]
        except (httpx.HTTPError, ValueError) as error:
            raise invalid(f"cannot reach an OpenAI-compatible server at {url}: {error}") from error
        if served_name not in names:
            raise invalid(
                f"the server at {url} serves {names}, not {served_name!r}; start it with "
                f"--served-model-name {served_name} or pass options.served_model_name"
            )

    def list(self) -> list[Backend]:
        with Session(self.platform.engine) as session:
            rows = session.exec(select(BackendRow).order_by(col(BackendRow.id)))
            return [self._entity(row) for row in rows]

    def get(self, name: str) -> Backend:
        with Session(self.platform.engine) as session:
            row = session.exec(select(BackendRow).where(BackendRow.name == name)).first()
            if row is None:
                raise not_found(f"backend {name!r} does not exist")
            return self._entity(row)

    def with_status(self, backend: Backend) -> Backend:
        healthy = 0
        for url in backend.urls:
            with contextlib.suppress(httpx.HTTPError):
                healthy += httpx.get(f"{url.removesuffix('/v1')}/health", timeout=2).is_success
        if healthy == len(backend.urls):
            status = "healthy"
        else:
            status = (
                f"degraded ({healthy}/{len(backend.urls)} healthy)" if healthy else "unreachable"
            )
        return backend.model_copy(update={"status": status})

    def delete(self, name: str, *, actor: str) -> None:
        backend = self.get(name)
        with Session(writer(self.platform.engine)) as session:
            in_use = [
                row.name
                for row in session.exec(select(DeploymentRow))
                if row.backend == name or any(arm.get("backend") == name for arm in row.arms)
            ]
            if in_use:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"backend {name!r} serves deployments {in_use}; delete or move them first",
                )
            row = session.exec(select(BackendRow).where(BackendRow.name == name)).one()
            session.delete(row)
            self.platform.events.record(
                session,
                Mutation(
                    actor=actor,
                    action="backend.delete",
                    resource=f"backends/{name}",
                    before=backend.model_dump(mode="json"),
                ),
            )
            session.commit()
        if backend.managed:
            self._stop(name, len(backend.urls))

    def _entity(self, row: BackendRow) -> Backend:
        supervisor = self.supervisor
        return Backend(
            name=row.name,
            kind=row.kind,
            managed=row.managed,
            urls=row.urls,
            base=row.base_ref,
            base_digest=row.base_digest,
            served_name=row.served_name,
            options=row.options,
            created_at=row.created_at,
            created_by=row.created_by,
            pids=[
                pid
                for index in range(len(row.urls))
                if supervisor
                and row.managed
                and (pid := supervisor.pid(_replica(row.name, index))) is not None
            ],
            restarts=sum(
                supervisor.restarts(_replica(row.name, index)) for index in range(len(row.urls))
            )
            if supervisor and row.managed
            else 0,
        )


def _replica(name: str, index: int) -> str:
    return f"{name}-{index}"


__all__ = ["Backend", "BackendCreate", "BackendService", "normalise_url", "wait_healthy"]
