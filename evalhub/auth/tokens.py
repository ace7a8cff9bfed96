"""API tokens: random secrets shown once, stored as sha256 digests, each with one role."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel
from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from evalhub.audit import record_mutation
from evalhub.db.tables import ApiTokenRow
from registry.db import writer
from registry.entities import Mutation
from registry.errors import ErrorCode, RegistryError, already_exists, not_found
from registry.names import check_name
from registry.tables import utcnow

TOKEN_PREFIX = "ehk_"

#: `last_used_at` is written at most this often per token: authentication stays a read.
LAST_USED_EVERY = timedelta(minutes=1)


class Role(StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2}


class Principal(BaseModel):
    """Who is calling: a token's name and role."""

    name: str
    role: Role

    def require(self, needed: Role, doing: str) -> None:
        if not self.role.allows(needed):
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                f"{doing} needs the {needed.value} role; token {self.name!r} is {self.role.value}",
            )


class TokenInfo(BaseModel):
    name: str
    role: Role
    prefix: str
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError as error:
        raise RegistryError(
            ErrorCode.INVALID_ARGUMENT, f"invalid role {value!r}: use viewer, editor or admin"
        ) from error


def create_token(
    engine: Engine, name: str, role: Role | str, *, actor: str, secret: str | None = None
) -> tuple[TokenInfo, str]:
    """Returns the token's info and its secret; the secret is never shown again."""
    check_name(name, "token")
    role = parse_role(role)
    secret = secret or new_secret()
    if len(secret) < 16:
        raise RegistryError(ErrorCode.INVALID_ARGUMENT, "a token must be at least 16 characters")
    with Session(writer(engine), expire_on_commit=False) as session:
        if session.exec(select(ApiTokenRow).where(ApiTokenRow.name == name)).first():
            raise already_exists(f"a token named {name!r} exists; pick another name or revoke it")
        row = ApiTokenRow(
            name=name,
            role=role.value,
            token_hash=hash_token(secret),
            prefix=secret[:8],
            created_by=actor,
        )
        session.add(row)
        session.flush()
        info = _info(row)
        after = info.model_dump(mode="json")
        record_mutation(
            session,
            Mutation(actor=actor, action="token.create", resource=f"tokens/{name}", after=after),
        )
        session.commit()
    return info, secret


def revoke_token(engine: Engine, name: str, *, actor: str) -> TokenInfo:
    """Revokes a token; the last live admin token is refused, or only the home's CLI could recover.

    The live admin rows are locked (FOR UPDATE on PostgreSQL, the write lock on SQLite) before
    the count, so two admins revoking each other at once cannot both succeed.
    """
    with Session(writer(engine), expire_on_commit=False) as session:
        row = session.exec(select(ApiTokenRow).where(ApiTokenRow.name == name)).first()
        if row is None:
            raise not_found(f"no token named {name!r}")
        before = _info(row).model_dump(mode="json")
        if row.revoked_at is None:
            if row.role == Role.ADMIN.value:
                _refuse_last_admin(session, name)
            row.revoked_at = utcnow()
            session.add(row)
        info = _info(row)
        record_mutation(
            session,
            Mutation(
                actor=actor,
                action="token.revoke",
                resource=f"tokens/{name}",
                before=before,
                after=info.model_dump(mode="json"),
            ),
        )
        session.commit()
    return info


def _refuse_last_admin(session: Session, name: str) -> None:
    live_admins = session.exec(
        select(ApiTokenRow.name)
        .where(ApiTokenRow.role == Role.ADMIN.value, col(ApiTokenRow.revoked_at).is_(None))
        .order_by(col(ApiTokenRow.id))
        .with_for_update()
    ).all()
    if all(other == name for other in live_admins):
        raise RegistryError(
            ErrorCode.CONFLICT,
            f"token {name!r} is the last admin token: create another admin token first",
        )


def list_tokens(engine: Engine) -> list[TokenInfo]:
    with Session(engine) as session:
        rows = session.exec(select(ApiTokenRow).order_by(col(ApiTokenRow.id)))
        return [_info(row) for row in rows]


def authenticate(engine: Engine, secret: str) -> Principal | None:
    """The principal a secret belongs to, or None when it is unknown or revoked."""
    with Session(engine) as session:
        row = session.exec(
            select(ApiTokenRow).where(ApiTokenRow.token_hash == hash_token(secret))
        ).first()
        if row is None or row.revoked_at is not None:
            return None
        principal = Principal(name=row.name, role=Role(row.role))
        last_used = row.last_used_at
    now = utcnow()
    if last_used is None or now - last_used >= LAST_USED_EVERY:
        _mark_used(engine, principal.name, now)
    return principal


def _mark_used(engine: Engine, name: str, now: datetime) -> None:
    """Best effort: a busy database delays the mark to a later request, never fails this one."""
    stale = col(ApiTokenRow.last_used_at).is_(None) | (
        col(ApiTokenRow.last_used_at) < now - LAST_USED_EVERY
    )
    try:
        with Session(writer(engine)) as session:
            session.exec(
                update(ApiTokenRow)
                .where(col(ApiTokenRow.name) == name, stale)
                .values(last_used_at=now)
            )
            session.commit()
    except OperationalError:
        return


def has_tokens(engine: Engine) -> bool:
    with Session(engine) as session:
        return session.exec(select(ApiTokenRow.id).limit(1)).first() is not None


def _info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        created_at=row.created_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


class TokenCache:
    """Remembers authenticated tokens for a few seconds: the gateway's hot path skips the database.

    A revocation through this process takes effect at once (`invalidate`); one made by another
    server process takes effect within `ttl` seconds.
    """

    def __init__(self, engine: Engine, ttl: float = 5.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._internal: dict[str, Principal] = {}

    def internal(self, name: str, role: Role) -> str:
        """A token that lives only in this process: the server's own calls to its own API."""
        secret = new_secret()
        self._internal[hash_token(secret)] = Principal(name=name, role=role)
        return secret

    def cached(self, secret: str) -> tuple[bool, Principal | None]:
        """(known, principal) without touching the database: the event loop's fast path."""
        key = hash_token(secret)
        if key in self._internal:
            return True, self._internal[key]
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return True, hit[1]
        return False, None

    def authenticate(self, secret: str) -> Principal | None:
        known, principal = self.cached(secret)
        if known:
            return principal
        now = time.monotonic()
        principal = authenticate(self.engine, secret)
        key = hash_token(secret)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key] = (now, principal)
        return principal

    def invalidate(self) -> None:
        self._entries.clear()
