"""Reference resolution, API tokens and the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from evalhub.api.deps import Admin, NamePath, PlatformDep, Viewer
from evalhub.api.schemas import TokenCreate, TokenCreated
from evalhub.audit import AuditEntry, search_audit
from evalhub.auth.tokens import Principal, TokenInfo, create_token, list_tokens, revoke_token
from registry.entities import ModelVersion, Page

router = APIRouter()


@router.get("/resolve", tags=["models"])
def resolve(
    platform: PlatformDep,
    _: Viewer,
    ref: Annotated[str, Query(description="name, name/3 or name@alias")],
) -> ModelVersion:
    return platform.registry.resolve(ref)


@router.get("/whoami", tags=["tokens"])
def whoami(principal: Viewer) -> Principal:
    """The calling token's name and role: what a UI needs to enable or disable actions."""
    return principal


@router.post("/tokens", status_code=201, tags=["tokens"])
def create_api_token(body: TokenCreate, platform: PlatformDep, principal: Admin) -> TokenCreated:
    info, secret = create_token(platform.engine, body.name, body.role, actor=principal.name)
    return TokenCreated(token=secret, info=info)


@router.get("/tokens", tags=["tokens"])
def list_api_tokens(platform: PlatformDep, _: Admin) -> list[TokenInfo]:
    return list_tokens(platform.engine)


@router.delete("/tokens/{name}", tags=["tokens"])
def revoke_api_token(name: NamePath, platform: PlatformDep, principal: Admin) -> TokenInfo:
    revoked = revoke_token(platform.engine, name, actor=principal.name)
    platform.tokens.invalidate()
    return revoked


@router.get("/audit", tags=["audit"])
def list_audit(
    platform: PlatformDep,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    resource: Annotated[str | None, Query(description="resource prefix, e.g. models/bot")] = None,
) -> Page[AuditEntry]:
    return search_audit(
        platform.engine,
        limit=limit,
        page_token=page_token,
        actor=actor,
        action=action,
        resource_prefix=resource,
    )
