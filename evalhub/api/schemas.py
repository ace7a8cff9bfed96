"""Request and response bodies of the REST API that are not registry entities."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from evalhub.auth.tokens import Role, TokenInfo
from registry.entities import DatasetFormat, DatasetVersion, ModelKind, VersionStatus
from registry.limits import Description, Reason, Tags, VersionNumber
from registry.names import NAME_PATTERN

STRICT = ConfigDict(extra="forbid")
NAME_RULE = f"matches {NAME_PATTERN}; others are refused with 400 and the rule"
# The pattern is documented, not validated here: the registry's 400 says the rule in words.
Name = Annotated[
    str,
    Field(
        max_length=128, description=NAME_RULE, json_schema_extra={"pattern": f"^{NAME_PATTERN}$"}
    ),
]


class ModelCreate(BaseModel):
    model_config = STRICT

    name: Name
    kind: ModelKind
    description: Description = ""
    tags: Tags = Field(default_factory=dict)


class ModelUpdate(BaseModel):
    model_config = STRICT

    description: Description | None = None
    tags: Tags | None = None


class VersionUpdate(BaseModel):
    model_config = STRICT

    description: Description | None = None
    tags: Tags | None = None
    status: VersionStatus | None = None
    metrics: dict[str, Any] | None = None


class AliasSet(BaseModel):
    model_config = STRICT

    version: VersionNumber
    reason: Reason = ""


class AliasRollback(BaseModel):
    model_config = STRICT

    reason: Reason = ""


class DatasetCreate(BaseModel):
    model_config = STRICT

    name: Name
    description: Description = ""
    tags: Tags = Field(default_factory=dict)


class DatasetVersionCreated(BaseModel):
    created: bool = Field(description="false when the same content was already a version")
    version: DatasetVersion


class TokenCreate(BaseModel):
    model_config = STRICT

    name: Name
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
