"""The change events as a stream (server-sent events) and as a paged history.

Every committed change is an audit entry with the same id (evalhub/events.py), so the history
is the audit log and the stream is the change bus, joined without a gap: a stream subscribes
first, then replays what committed after `after` (or the `Last-Event-ID` a reconnecting
EventSource sends), then relays live changes. Token changes are shown to admins only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlmodel import Session, col, select

from evalhub.api.deps import EventsAfter, Limit, PlatformDep, Viewer
from evalhub.auth.tokens import Principal, Role
from evalhub.db.tables import AuditRow
from evalhub.events import Change
from registry.entities import Page
from registry.paging import decode_page_token, fetch_page, page_of

router = APIRouter()

Resources = Annotated[
    list[str] | None,
    Query(
        max_length=20,
        description="Resource prefixes to keep, e.g. `deployments/chat` or `models/bot`; "
        "repeat for several. None: every change.",
    ),
]
KEEP_ALIVE_SECONDS = 15.0
_DISCONNECT_CHECK_SECONDS = 0.5  # how soon a stream that lost its reader ends
_REPLAY_LIMIT = 10_000
_ADMIN_ONLY = "tokens/"


def _visible(resources: list[str] | None, principal: Principal) -> Any:
    """A predicate on a change's resource: under one of `resources`, and allowed to be seen."""
    prefixes = tuple(resources or ())
    admin = principal.role.allows(Role.ADMIN)

    def keep(resource: str) -> bool:
        if not admin and resource.startswith(_ADMIN_ONLY):
            return False
        return not prefixes or resource.startswith(prefixes)

    return keep


def _filters(query: Any, resources: list[str] | None, principal: Principal) -> Any:
    if resources:
        from sqlalchemy import or_

        query = query.where(or_(*(col(AuditRow.resource).startswith(p) for p in resources)))
    if not principal.role.allows(Role.ADMIN):
        query = query.where(~col(AuditRow.resource).startswith(_ADMIN_ONLY))
    return query


@router.get("/events/history", tags=["events"])
def list_events(
    platform: PlatformDep,
    principal: Viewer,
    resource: Resources = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    after: EventsAfter = None,
    limit: Limit = 100,
    page_token: Annotated[str | None, Query(max_length=200)] = None,
) -> Page[Change]:
    """Committed changes, newest first; `after` keeps only those with a larger id (what a
    client that saw `after` has missed)."""
    query = _filters(select(AuditRow).order_by(col(AuditRow.id).desc()), resource, principal)
    before_id = decode_page_token(page_token)
    if before_id is not None:
        query = query.where(col(AuditRow.id) < before_id)
    if after is not None:
        query = query.where(col(AuditRow.id) > after)
    if action:
        query = query.where(AuditRow.action == action)
    with Session(platform.engine) as session:
        rows, more = fetch_page(session, query, limit)
    return page_of(rows, more, lambda row: Change.of(row))


@router.get(
    "/events",
    tags=["events"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
)
async def stream_events(
    request: Request,
    platform: PlatformDep,
    principal: Viewer,
    resource: Resources = None,
    after: EventsAfter = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
) -> StreamingResponse:
    """Server-sent events, one per committed change (`id:` the change id, `event:` its action,
    `data:` the change as JSON), from `after` or `Last-Event-ID` on (else from now); a comment
    line every 15 s keeps proxies from closing an idle stream."""
    keep = _visible(resource, principal)
    loop = asyncio.get_running_loop()
    live: asyncio.Queue[Change] = asyncio.Queue(maxsize=_REPLAY_LIMIT)

    def relay(change: Change) -> None:
        if keep(change.resource):
            loop.call_soon_threadsafe(_offer, live, change)

    unsubscribe = platform.events.subscribe(relay)
    start = after
    if start is None and last_event_id is not None and last_event_id.isdigit():
        start = int(last_event_id)

    def replay() -> list[Change]:
        if start is None:
            return []
        query = _filters(
            select(AuditRow).where(col(AuditRow.id) > start).order_by(col(AuditRow.id)),
            resource,
            principal,
        ).limit(_REPLAY_LIMIT)
        with Session(platform.engine) as session:
            return [Change.of(row) for row in session.exec(query)]

    async def body() -> AsyncIterator[str]:
        try:
            sent: set[int] = set()
            for event in await run_in_threadpool(replay):
                sent.add(event.id)
                yield _frame(event)
            yield ": connected\n\n"
            idle = 0.0
            while not await request.is_disconnected():
                try:
                    change = await asyncio.wait_for(live.get(), _DISCONNECT_CHECK_SECONDS)
                except TimeoutError:
                    idle += _DISCONNECT_CHECK_SECONDS
                    if idle >= KEEP_ALIVE_SECONDS:
                        idle = 0.0
                        yield ": keep-alive\n\n"
                    continue
                if change.id not in sent:
                    yield _frame(change)
        finally:
            unsubscribe()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def _offer(queue: asyncio.Queue[Change], change: Change) -> None:
    if not queue.full():  # a reader that stopped reading loses changes, not the server
        queue.put_nowait(change)


def _frame(event: Change) -> str:
    return f"id: {event.id}\nevent: {event.action}\ndata: {event.model_dump_json()}\n\n"
