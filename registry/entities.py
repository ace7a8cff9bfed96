"""What the store hands out: frozen pydantic entities, separate from database rows."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from registry.limits import Int64

T = TypeVar("T")


class ModelKind(StrEnum):
    BASE = "base"
    ADAPTER = "adapter"


class VersionStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    ARCHIVED = "archived"


class DatasetFormat(StrEnum):
    CHAT = "chat"
    EVAL = "eval"


class Entity(BaseModel):
    model_config = ConfigDict(frozen=True)


class Page(Entity, Generic[T]):
    data: list[T]
    next_page_token: str | None = None


class RegisteredModel(Entity):
    name: str
    kind: ModelKind
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    latest_version: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    created_by: str = ""


class ModelVersion(Entity):
    ref: str = Field(description="name/version, usable anywhere a model reference is taken")
    model: str
    version: int
    kind: ModelKind
    status: VersionStatus
    digest: str = Field(description="sha256 of the version's files (content address)")
    artifact_uri: str
    size_bytes: int
    file_count: int
    source: str = ""
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    created_by: str = ""
    architecture: str | None = None
    parameter_count: int | None = None
    dtype: str | None = None
    base: str | None = Field(default=None, description="ref of the base version an adapter is on")
    base_digest: str | None = None
    peft_method: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    dropout: float | None = None
    modules_to_save: list[str] | None = None
    trainable_parameters: int | None = None
    trained_on: str | None = Field(
        default=None,
        description="the base the adapter's own config names (base_model_name_or_path)",
    )
    dataset: str | None = Field(default=None, description="ref of the dataset version trained on")
    training_job: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    code_version: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class AliasMove(Entity):
    """One entry of an alias's append-only history."""

    id: int
    model: str
    alias: str
    action: str = Field(description="set, delete or rollback")
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    created_at: datetime


class Dataset(Entity):
    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    latest_version: int | None = None
    created_at: datetime
    created_by: str = ""


class DatasetVersion(Entity):
    ref: str
    dataset: str
    version: int
    digest: str
    artifact_uri: str
    format: DatasetFormat
    split: str | None = None
    row_count: int
    size_bytes: int
    filename: str = ""
    created_at: datetime
    created_by: str = ""


class LineageEdge(Entity):
    source_kind: str
    source_id: str
    relation: str
    target_kind: str
    target_id: str
    attributes: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class Lineage(Entity):
    """Where a version came from and what used it."""

    version: ModelVersion
    base: ModelVersion | None = None
    dataset: DatasetVersion | None = None
    derived: list[str] = Field(default_factory=list, description="refs of versions built on it")
    upstream: list[LineageEdge] = Field(default_factory=list)
    downstream: list[LineageEdge] = Field(default_factory=list)


class LineageInput(BaseModel):
    """What a caller knows about how an adapter or model was made."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        default=None, max_length=128, description="dataset version ref, e.g. chats/2"
    )
    training_job: str | None = Field(default=None, max_length=128)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: Int64 | None = None
    code_version: str | None = Field(default=None, max_length=128)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Mutation(Entity):
    """Handed to listeners inside the mutating transaction (evalhub writes its audit log so)."""

    actor: str
    action: str
    resource: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
