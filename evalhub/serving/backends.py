"""Backends as resources: managed processes evalhub starts, or servers it attaches to by URL."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from evalhub.audit import record_mutation
from evalhub.platform import Platform
from evalhub.serving.supervisor import (
    Supervisor,
    free_port,
    local_backend_spec,
    vllm_backend_spec,
    wait_healthy,
)
from evalhub.serving.tables import BackendRow, DeploymentRow
from registry.db import writer
from registry.entities import ModelKind, Mutation
from registry.errors import ErrorCode, RegistryError, already_exists, invalid, not_found
from registry.names import check_name

BackendKind = Literal["local", "vllm"]


class BackendCreate(BaseModel):
    name: str
    kind: BackendKind = "local"
    base: str = Field(description="the base model version it serves, e.g. tiny@production")
    managed: bool = Field(default=True, description="evalhub starts and supervises the process")
    url: str | None = Field(default=None, description="for managed=false: the server's base URL")
    options: dict[str, Any] = Field(default_factory=dict)


class Backend(BaseModel):
    name: str
    kind: BackendKind
    managed: bool
    url: str
    base: str
    base_digest: str
    served_name: str
    options: dict[str, Any]
    created_at: datetime
    created_by: str
    status: str = "unknown"
    pid: int | None = None
    restarts: int = 0


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
            if body.url:
                raise invalid("a managed backend gets its URL from evalhub; omit 'url'")
            url = self._start(body.name, body.kind, version.digest, served_name, body.options)
        else:
            if not body.url:
                raise invalid("an attached backend (managed=false) needs its 'url'")
            url = normalise_url(body.url)
            served_name = body.options.get("served_model_name", served_name)
            self._check_serves(url, served_name)
        row = BackendRow(
            name=body.name,
            kind=body.kind,
            managed=body.managed,
            url=url,
            base_ref=version.ref,
            base_digest=version.digest,
            served_name=served_name,
            options=body.options,
            created_by=actor,
        )
        try:
            with Session(writer(self.platform.engine), expire_on_commit=False) as session:
                session.add(row)
                session.flush()
                backend = self._entity(row)
                record_mutation(
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
            if body.managed and self.supervisor is not None:
                self.supervisor.stop(body.name)
            raise
        return backend

    def restart_managed(self) -> None:
        """At server start: managed backends died with the previous server; start them again."""
        for backend in self.list():
            if backend.managed:
                url = self._start(
                    backend.name, backend.kind, backend.base_digest, backend.served_name,
                    backend.options,
                )  # fmt: skip
                with Session(self.platform.engine) as session:
                    row = session.exec(
                        select(BackendRow).where(BackendRow.name == backend.name)
                    ).one()
                    row.url = url
                    session.add(row)
                    session.commit()

    def _start(
        self, name: str, kind: str, digest: str, served_name: str, options: dict[str, Any]
    ) -> str:
        if self.supervisor is None:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                "this process does not supervise backends; run 'evalhub serve' or attach one by url",
            )
        model_dir = self.platform.registry.artifacts.materialize(digest)
        port = int(options.get("port") or free_port())
        settings = self.platform.settings
        if kind == "local":
            spec = local_backend_spec(name, model_dir, served_name, port)
        else:
            spec = vllm_backend_spec(
                name,
                model_dir,
                served_name,
                port,
                python=settings.vllm_python,
                max_loras=int(options.get("max_loras", settings.vllm_max_loras)),
                max_lora_rank=int(options.get("max_lora_rank", settings.vllm_max_lora_rank)),
                max_cpu_loras=int(options.get("max_cpu_loras", settings.vllm_max_cpu_loras)),
                extra_args=list(options.get("args", settings.vllm_args)),
            )
        return self.supervisor.start(spec)

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
        try:
            healthy = httpx.get(f"{backend.url.removesuffix('/v1')}/health", timeout=2).is_success
        except httpx.HTTPError:
            healthy = False
        return backend.model_copy(update={"status": "healthy" if healthy else "unreachable"})

    def delete(self, name: str, *, actor: str) -> None:
        backend = self.get(name)
        with Session(writer(self.platform.engine)) as session:
            users = session.exec(select(DeploymentRow.name).where(DeploymentRow.backend == name))
            in_use = list(users)
            if in_use:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"backend {name!r} serves deployments {in_use}; delete or move them first",
                )
            row = session.exec(select(BackendRow).where(BackendRow.name == name)).one()
            session.delete(row)
            record_mutation(
                session,
                Mutation(
                    actor=actor,
                    action="backend.delete",
                    resource=f"backends/{name}",
                    before=backend.model_dump(mode="json"),
                ),
            )
            session.commit()
        if backend.managed and self.supervisor is not None:
            self.supervisor.stop(name)

    def _entity(self, row: BackendRow) -> Backend:
        supervisor = self.supervisor
        return Backend(
            name=row.name,
            kind=row.kind,  # type: ignore[arg-type]
            managed=row.managed,
            url=row.url,
            base=row.base_ref,
            base_digest=row.base_digest,
            served_name=row.served_name,
            options=row.options,
            created_at=row.created_at,
            created_by=row.created_by,
            pid=supervisor.pid(row.name) if supervisor and row.managed else None,
            restarts=supervisor.restarts(row.name) if supervisor and row.managed else 0,
        )


__all__ = ["Backend", "BackendCreate", "BackendService", "normalise_url", "wait_healthy"]
