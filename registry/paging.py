"""Keyset paging, one way for every list: fetch one row past the page to know if more follow,
and hand back an opaque token naming the last row's key."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any, TypeVar

from sqlmodel import Session

from registry.entities import Page
from registry.errors import invalid

Row = TypeVar("Row")
Item = TypeVar("Item")


def encode_page_token(last_key: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_key}".encode()).decode().rstrip("=")


def decode_page_token(token: str | None) -> int | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "id":
            raise ValueError(raw)
        return int(value)
    except ValueError as error:
        raise invalid(
            f"invalid page_token {token!r}: pass the value a previous page returned"
        ) from error


def fetch_page(session: Session, query: Any, limit: int) -> tuple[list[Any], bool]:
    """The first `limit` rows of `query` (already ordered and filtered), and whether more follow."""
    rows = list(session.exec(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def page_of(
    rows: list[Row],
    more: bool,
    item: Callable[[Row], Item],
    key: Callable[[Row], int | None] = lambda row: getattr(row, "id", None),
) -> Page[Item]:
    """A page of `item(row)`s whose token, when more follow, names the last row's `key`."""
    last = key(rows[-1]) if more and rows else None
    token = encode_page_token(last) if last is not None else None
    return Page(data=[item(row) for row in rows], next_page_token=token)
