"""Models, versions, aliases and lineage as the registry's API returns them."""

from __future__ import annotations

from dashboard.models import ReadModel


class Model(ReadModel):
    name: str
    kind: str
    description: str = ""
    latest_version: int | None = None
    aliases: dict[str, int] = {}
    created_at: str


class Version(ReadModel):
    ref: str
    model: str
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
    created_by: str = ""


class AliasMove(ReadModel):
    action: str
    from_version: int | None = None
    to_version: int | None = None
    actor: str
    reason: str = ""
    created_at: str


class DatasetVersion(ReadModel):
    ref: str
    row_count: int
    digest: str


class Edge(ReadModel):
    source_kind: str
    source_id: str
    relation: str
    target_kind: str
    target_id: str


class Lineage(ReadModel):
    version: Version
    base: Version | None = None
    dataset: DatasetVersion | None = None
    derived: list[str] = []
    upstream: list[Edge] = []
    downstream: list[Edge] = []
