"""Models, versions, aliases and lineage as the registry's API returns them."""

from __future__ import annotations

from typing import Any

from dashboard.models import ReadModel


class Model(ReadModel):
    name: str
    kind: str
    description: str = ""
    latest_version: int | None = None
    aliases: dict[str, int] = {}


class Version(ReadModel):
    ref: str
    version: int
    kind: str
    status: str
    digest: str
    size_bytes: int
    aliases: list[str] = []
    base: str | None = None
    peft_method: str | None = None
    rank: int | None = None
    dataset: str | None = None
    training_job: str | None = None
    created_at: str


class AliasMove(ReadModel):
    action: str
    from_version: int | None = None
    to_version: int | None = None
    actor: str
    reason: str = ""
    created_at: str


class Edge(ReadModel):
    source_kind: str
    source_id: str
    relation: str
    target_kind: str
    target_id: str


class Lineage(ReadModel):
    version: Version
    base: Version | None = None
    dataset: dict[str, Any] | None = None
    upstream: list[Edge] = []
    downstream: list[Edge] = []
