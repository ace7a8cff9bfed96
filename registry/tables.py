"""SQLModel tables of the registry. Rows stay inside the store; callers get entities."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC everywhere and hands back aware UTC, so SQLite and PostgreSQL agree."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def stored_id(row: Any) -> int:
    """The id of a row read from the database or flushed to it (SQLModel types it optional)."""
    if row.id is None:
        raise ValueError(f"{type(row).__name__} has no id yet: flush it first")
    return int(row.id)


def _time(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, **kwargs))


def _json(default: Any) -> Any:
    return Field(default_factory=default, sa_column=Column(JSON, nullable=False))


def _json_or_null() -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=True))


class RegisteredModelRow(SQLModel, table=True):
    __tablename__ = "registered_models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    kind: str = Field(max_length=16)
    description: str = Field(default="")
    tags: dict[str, str] = _json(dict)
    created_at: datetime = _time()
    updated_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class ModelVersionRow(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_number"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_models.id", index=True)
    version: int
    status: str = Field(max_length=16)
    digest: str = Field(max_length=80, index=True)
    artifact_uri: str
    size_bytes: int = 0
    file_count: int = 0
    source: str = Field(default="")
    description: str = Field(default="")
    tags: dict[str, str] = _json(dict)
    created_at: datetime = _time()
    updated_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)
    # A base version: what the directory holds.
    architecture: str | None = None
    parameter_count: int | None = None
    dtype: str | None = None
    # An adapter version: its base and its PEFT configuration.
    base_version_id: int | None = Field(default=None, foreign_key="model_versions.id", index=True)
    peft_method: str | None = None
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = _json_or_null()
    dropout: float | None = None
    modules_to_save: list[str] | None = _json_or_null()
    trainable_parameters: int | None = None
    trained_on: str | None = None
    # Lineage: what made it.
    dataset_version_id: int | None = Field(
        default=None, foreign_key="dataset_versions.id", index=True
    )
    training_job: str | None = None
    hyperparameters: dict[str, Any] = _json(dict)
    seed: int | None = None
    code_version: str | None = None
    metrics: dict[str, Any] = _json(dict)


class AliasRow(SQLModel, table=True):
    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_model_aliases_name"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_models.id", index=True)
    alias: str = Field(max_length=64)
    version_id: int = Field(foreign_key="model_versions.id", index=True)
    updated_at: datetime = _time()


class AliasHistoryRow(SQLModel, table=True):
    """Append-only: every move, removal and rollback of an alias, in order of `id`."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_lookup", "model_id", "alias", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_models.id")
    alias: str = Field(max_length=64)
    action: str = Field(max_length=16)
    from_version: int | None = None
    to_version: int | None = None
    actor: str = Field(default="", max_length=128)
    reason: str = Field(default="")
    created_at: datetime = _time()


class DatasetRow(SQLModel, table=True):
    __tablename__ = "datasets"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    description: str = Field(default="")
    tags: dict[str, str] = _json(dict)
    created_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class DatasetVersionRow(SQLModel, table=True):
    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_number"),
        UniqueConstraint("dataset_id", "digest", name="uq_dataset_versions_digest"),
    )

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    version: int
    digest: str = Field(max_length=80)
    artifact_uri: str
    format: str = Field(max_length=16)
    split: str | None = Field(default=None, max_length=64)
    row_count: int
    size_bytes: int
    filename: str = Field(default="")
    created_at: datetime = _time()
    created_by: str = Field(default="", max_length=128)


class LineageEdgeRow(SQLModel, table=True):
    """Links the registry does not own (training jobs, eval runs) to model and dataset versions."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint(
            "source_kind", "source_id", "relation", "target_kind", "target_id", name="uq_lineage"
        ),
        Index("ix_lineage_target", "target_kind", "target_id"),
        Index("ix_lineage_source", "source_kind", "source_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source_kind: str = Field(max_length=32)
    source_id: str = Field(max_length=128)
    relation: str = Field(max_length=32)
    target_kind: str = Field(max_length=32)
    target_id: str = Field(max_length=128)
    attributes: dict[str, Any] = _json(dict)
    created_at: datetime = _time()
