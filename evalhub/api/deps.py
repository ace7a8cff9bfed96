"""Annotated dependencies: the platform, the calling principal, and role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from evalhub.auth.tokens import Principal, Role
from evalhub.platform import Platform
from registry.errors import ErrorCode, RegistryError
from registry.limits import MAX_INT64
from registry.names import ALIAS_PATTERN, NAME_PATTERN

# Parameters that many routes share, with their limits in the schema.
Limit = Annotated[int, Query(ge=1, le=1000, description="Most items in one page.")]
VersionPath = Annotated[int, Path(ge=1, le=MAX_INT64, description="A version number.")]
EventsAfter = Annotated[
    int | None, Query(ge=0, le=MAX_INT64, description="Only events after this id.")
]

# Name patterns are documented; the registry refuses others with a 400 that states the rule.
NamePath = Annotated[str, Path(max_length=128, json_schema_extra={"pattern": f"^{NAME_PATTERN}$"})]
AliasPath = Annotated[str, Path(max_length=64, json_schema_extra={"pattern": f"^{ALIAS_PATTERN}$"})]

bearer = HTTPBearer(auto_error=False, description="An API token from `evalhub token create`.")


async def get_platform(request: Request) -> Platform:
    return request.app.state.platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_principal(
    request: Request,
    platform: PlatformDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    local: Principal | None = request.app.state.local_principal
    if local is not None:
        return local
    if credentials is None or not credentials.credentials:
        raise RegistryError(
            ErrorCode.UNAUTHENTICATED,
            "no API token: send 'Authorization: Bearer <token>' (set EVALHUB_TOKEN for the CLI; "
            "an admin makes tokens with 'evalhub token create')",
        )
    known, principal = platform.tokens.cached(credentials.credentials)
    if not known:
        # A cache miss reads (and now and then marks last use) in the database: off the loop.
        principal = await run_in_threadpool(platform.tokens.authenticate, credentials.credentials)
    if principal is None:
        raise RegistryError(ErrorCode.UNAUTHENTICATED, "the API token is unknown or revoked")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def requires(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        principal.require(role, "this request")
        return principal

    return check


Viewer = Annotated[Principal, Depends(requires(Role.VIEWER))]
Editor = Annotated[Principal, Depends(requires(Role.EDITOR))]
Admin = Annotated[Principal, Depends(requires(Role.ADMIN))]
