"""Request and response bodies of the REST API that are not registry entities."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from evalhub.auth.tokens import Role, TokenInfo
from registry.entities import DatasetFormat, DatasetVersion, ModelKind, VersionStatus


class ModelCreate(BaseModel):
    name: str = Field(description="[a-z0-9][a-z0-9._-]{0,127}")
    kind: ModelKind
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class ModelUpdate(BaseModel):
    description: str | None = None
    tags: dict[str, str] | None = None


class VersionUpdate(BaseModel):
    description: str | None = None
    tags: dict[str, str] | None = None
    status: VersionStatus | None = None
    metrics: dict[str, Any] | None = None


class AliasSet(BaseModel):
    version: int = Field(ge=1)
    reason: str = ""


class AliasRollback(BaseModel):
    reason: str = ""


class DatasetCreate(BaseModel):
    name: str
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class DatasetVersionCreated(BaseModel):
    created: bool = Field(description="false when the same content was already a version")
    version: DatasetVersion


class TokenCreate(BaseModel):
    name: str
    role: Role = Role.VIEWER


class TokenCreated(BaseModel):
    token: str = Field(description="the secret; shown this once, stored only as a digest")
    info: TokenInfo


__all__ = [
    "AliasRollback",
    "AliasSet",
    "DatasetCreate",
    "DatasetFormat",
    "DatasetVersionCreated",
    "ModelCreate",
    "ModelUpdate",
    "TokenCreate",
    "TokenCreated",
    "VersionUpdate",
]
