"""Aliases: moves, removal, history, rollback. Moving a protected alias needs admin."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from evalhub.api.deps import (
    Admin,
    AliasPath,
    CurrentPrincipal,
    Editor,
    NamePath,
    PlatformDep,
    Viewer,
)
from evalhub.api.schemas import AliasRollback, AliasSet
from evalhub.auth.tokens import Principal, Role
from registry.entities import AliasMove, ModelVersion, Page
from registry.errors import not_found
from registry.names import PROTECTED_ALIASES, check_alias

router = APIRouter(prefix="/models/{name}/aliases", tags=["aliases"])


def _may_move(principal: Principal, alias: AliasPath) -> None:
    check_alias(alias)
    needed = Role.ADMIN if alias in PROTECTED_ALIASES else Role.EDITOR
    principal.require(needed, f"moving @{alias}")


@router.put("/{alias}")
def set_alias(
    name: NamePath, alias: AliasPath, body: AliasSet, platform: PlatformDep, principal: Editor
) -> AliasMove:
    _may_move(principal, alias)
    return platform.registry.set_alias(
        name, alias, body.version, reason=body.reason, actor=principal.name
    )


@router.delete("/{alias}")
def delete_alias(
    name: NamePath,
    alias: AliasPath,
    platform: PlatformDep,
    principal: CurrentPrincipal,
    reason: str = "",
) -> AliasMove:
    _may_move(principal, alias)
    return platform.registry.delete_alias(name, alias, reason=reason, actor=principal.name)


@router.get("/{alias}")
def get_alias(
    name: NamePath,
    alias: AliasPath,
    platform: PlatformDep,
    _: Viewer,
    at: Annotated[datetime | None, Query(description="ISO time: the version held then")] = None,
) -> ModelVersion:
    if at is None:
        return platform.registry.get_alias(name, alias)
    held = platform.registry.alias_at(name, alias, at)
    if held is None:
        raise not_found(f"@{alias} of {name!r} held no version at {at.isoformat()}")
    return held


@router.get("/{alias}/history")
def alias_history(
    name: NamePath,
    alias: AliasPath,
    platform: PlatformDep,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: str | None = None,
) -> Page[AliasMove]:
    return platform.registry.alias_history(name, alias, limit=limit, page_token=page_token)


@router.post("/{alias}/rollback")
def rollback_alias(
    name: NamePath,
    alias: AliasPath,
    platform: PlatformDep,
    principal: Admin,
    body: AliasRollback | None = None,
) -> AliasMove:
    reason = body.reason if body else ""
    return platform.registry.rollback_alias(name, alias, reason=reason, actor=principal.name)
