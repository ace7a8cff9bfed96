"""One typed record per gateway request: what the traffic log stores and the monitors read.

Whatever a client sends, the record fits its columns: strings are clipped to their column's
length and cleared of NUL (PostgreSQL refuses both; SQLite would store them), counts outside a
64-bit integer are dropped. The request body is kept whole in `request`, so nothing is lost by
clipping a field that repeats part of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from evalhub.serving.tables import TrafficRow
from registry.entities import ModelVersion
from registry.tables import utcnow

MAX_INT = 2**63 - 1


def _column_lengths() -> dict[str, int]:
    table = TrafficRow.__table__  # type: ignore[attr-defined]
    return {
        column.name: column.type.length
        for column in table.columns
        if getattr(column.type, "length", None) is not None
    }


COLUMN_LENGTHS = _column_lengths()


class TrafficRecord(BaseModel):
    id: str
    created_at: datetime
    deployment: str | None
    arm: str | None
    model: str
    version: str | None
    digest: str | None
    user: str | None
    endpoint: str
    request: dict[str, Any]
    response_text: str | None
    status: int
    error: str | None
    stream: bool
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None

    def bounded(self) -> TrafficRecord:
        """This record with every field inside what its column can hold."""
        update: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, str):
                clean = value.replace("\x00", "")
                limit = COLUMN_LENGTHS.get(name)
                if limit is not None and len(clean) > limit:
                    clean = clean[: limit - 1] + "…"
                if clean != value:
                    update[name] = clean
            elif isinstance(value, int) and not -MAX_INT <= value <= MAX_INT:
                update[name] = None
        return self.model_copy(update=update) if update else self


def token_count(value: Any) -> int | None:
    """A usage count as the backend reported it, when it is one."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT:
        return value
    return None


@dataclass
class RequestContext:
    """What the gateway knows of one request, gathered as it routes and forwards it."""

    request_id: str
    endpoint: str  # "chat/completions" or "completions"
    body: dict[str, Any]
    model: str
    user: str | None
    started: float = field(default_factory=time.perf_counter)
    deployment: str | None = None
    arm: str | None = None
    version: str | None = None
    digest: str | None = None
    #: The registered model of `version`: with it, the version's price.
    registered_model: str | None = None

    def routed_to(self, deployment: str | None, arm: str | None, version: ModelVersion) -> None:
        """Where the request went (again, after a failover)."""
        self.deployment = deployment
        self.arm = arm
        self.version = version.ref
        self.digest = version.digest
        self.registered_model = version.model

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def record(
        self,
        status: int,
        *,
        text: str | None = None,
        usage: dict[str, Any] | None = None,
        ttft_ms: float | None = None,
        error: str | None = None,
        cost: float | None = None,
    ) -> TrafficRecord:
        usage = usage or {}
        return TrafficRecord(
            id=self.request_id,
            created_at=utcnow(),
            deployment=self.deployment,
            arm=self.arm,
            model=self.model,
            version=self.version,
            digest=self.digest,
            user=self.user,
            endpoint=self.endpoint.replace("/", "."),
            request=self.body,
            response_text=text,
            status=status,
            error=error,
            stream=bool(self.body.get("stream")),
            latency_ms=round(self.seconds * 1000, 3),
            ttft_ms=round(ttft_ms, 3) if ttft_ms is not None else None,
            prompt_tokens=token_count(usage.get("prompt_tokens")),
            completion_tokens=token_count(usage.get("completion_tokens")),
            cost=cost,
        )
