"""The audit log: who changed what, when, with the state before and after."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from evalhub.db.tables import AuditRow
from registry.entities import Mutation, Page
from registry.paging import decode_page_token, fetch_page, page_of


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    resource: str
    before: dict | None
    after: dict | None


def record_mutation(session: Session, mutation: Mutation) -> AuditRow:
    """Writes the audit entry inside the mutating transaction, so both commit or neither.

    Services call `ChangeBus.record`, which writes it so and publishes the change; tokens call
    this directly, since no one subscribes to them.
    """
    row = AuditRow(
        actor=mutation.actor,
        action=mutation.action,
        resource=mutation.resource,
        before=mutation.before,
        after=mutation.after,
    )
    session.add(row)
    return row


def search_audit(
    engine: Engine,
    *,
    limit: int = 100,
    page_token: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    resource_prefix: str | None = None,
) -> Page[AuditEntry]:
    """Newest first."""
    before_id = decode_page_token(page_token)
    query = select(AuditRow).order_by(col(AuditRow.id).desc())
    if before_id is not None:
        query = query.where(col(AuditRow.id) < before_id)
    if actor:
        query = query.where(AuditRow.actor == actor)
    if action:
        query = query.where(AuditRow.action == action)
    if resource_prefix:
        query = query.where(col(AuditRow.resource).startswith(resource_prefix))
    with Session(engine) as session:
        rows, more = fetch_page(session, query, limit)
    return page_of(rows, more, lambda row: AuditEntry.model_validate(row, from_attributes=True))
