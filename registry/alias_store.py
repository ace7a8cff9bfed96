"""Aliases: named pointers to versions, every move kept in their history."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, col, select

from registry.entities import (
    AliasMove,
    ModelVersion,
    Page,
    VersionStatus,
)
from registry.errors import ErrorCode, RegistryError, not_found
from registry.lineage_store import LineageStore
from registry.names import Ref, check_alias
from registry.paging import decode_page_token, fetch_page, page_of
from registry.store_base import check_limit, get_model_row, get_version_row, mutation_of
from registry.tables import (
    AliasHistoryRow,
    AliasRow,
    ModelVersionRow,
    RegisteredModelRow,
    stored_id,
    utcnow,
)


class AliasStore(LineageStore):
    """Aliases; each move takes the model's lock and is written to the history."""

    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str = "", actor: str = ""
    ) -> AliasMove:
        check_alias(alias)
        with self.write() as session:
            model_row = get_model_row(session, name, lock=True)
            target = get_version_row(session, model_row, version)
            if target.status != VersionStatus.READY.value:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"{name}/{version} is {target.status}; only ready versions can carry an alias",
                )
            return self._move(session, model_row, alias, target, "set", reason, actor)

    def delete_alias(
        self, name: str, alias: str, *, reason: str = "", actor: str = ""
    ) -> AliasMove:
        check_alias(alias)
        with self.write() as session:
            model_row = get_model_row(session, name, lock=True)
            return self._move(session, model_row, alias, None, "delete", reason, actor)

    def rollback_alias(
        self, name: str, alias: str, *, reason: str = "", actor: str = ""
    ) -> AliasMove:
        """Points the alias back at the version it held before its last move."""
        check_alias(alias)
        with self.write() as session:
            model_row = get_model_row(session, name, lock=True)
            last = session.exec(
                select(AliasHistoryRow)
                .where(AliasHistoryRow.model_id == model_row.id, AliasHistoryRow.alias == alias)
                .order_by(col(AliasHistoryRow.id).desc())
            ).first()
            if last is None:
                raise not_found(f"model {name!r} has no alias @{alias}")
            if last.from_version is None:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"@{alias} held no version before its last move ({last.action} to "
                    f"{name}/{last.to_version}); there is nothing to roll back to",
                )
            target = get_version_row(session, model_row, last.from_version)
            if target.status != VersionStatus.READY.value:
                raise RegistryError(
                    ErrorCode.FAILED_PRECONDITION,
                    f"cannot roll @{alias} back to {name}/{target.version}: it is {target.status}",
                )
            reason = reason or f"rollback of move #{last.id}"
            return self._move(session, model_row, alias, target, "rollback", reason, actor)

    def _move(
        self,
        session: Session,
        model_row: RegisteredModelRow,
        alias: str,
        target: ModelVersionRow | None,
        action: str,
        reason: str,
        actor: str,
    ) -> AliasMove:
        current = session.exec(
            select(AliasRow).where(AliasRow.model_id == model_row.id, AliasRow.alias == alias)
        ).first()
        from_version: int | None = None
        if current is not None:
            previous = session.get(ModelVersionRow, current.version_id)
            from_version = previous.version if previous is not None else None
        if target is None:
            if current is None:
                raise not_found(f"model {model_row.name!r} has no alias @{alias}")
            session.delete(current)
        elif current is None:
            session.add(
                AliasRow(model_id=stored_id(model_row), alias=alias, version_id=stored_id(target))
            )
        else:
            current.version_id = stored_id(target)
            current.updated_at = utcnow()
            session.add(current)
        entry = AliasHistoryRow(
            model_id=stored_id(model_row),
            alias=alias,
            action=action,
            from_version=from_version,
            to_version=target.version if target is not None else None,
            actor=actor,
            reason=reason,
        )
        session.add(entry)
        session.flush()
        move = _move_entity(entry, model_row.name)
        self._emit(
            session,
            mutation_of(
                actor,
                f"alias.{action}",
                f"models/{model_row.name}/aliases/{alias}",
                {"version": from_version} if from_version is not None else None,
                {"version": move.to_version, "reason": reason} if target is not None else None,
            ),
        )
        return move

    def get_alias(self, name: str, alias: str) -> ModelVersion:
        check_alias(alias)
        return self.resolve(Ref(name, alias=alias))

    def alias_history(
        self, name: str, alias: str, *, limit: int = 100, page_token: str | None = None
    ) -> Page[AliasMove]:
        """Oldest first: each entry's from_version is the previous entry's to_version."""
        check_alias(alias)
        check_limit(limit)
        after = decode_page_token(page_token)
        with self.read() as session:
            model_row = get_model_row(session, name)
            query = (
                select(AliasHistoryRow)
                .where(AliasHistoryRow.model_id == model_row.id, AliasHistoryRow.alias == alias)
                .order_by(col(AliasHistoryRow.id))
            )
            if after is not None:
                query = query.where(col(AliasHistoryRow.id) > after)
            rows, more = fetch_page(session, query, limit)
            return page_of(rows, more, lambda r: _move_entity(r, name))

    def alias_at(self, name: str, alias: str, when: datetime) -> ModelVersion | None:
        """Which version held the alias at `when` (None if it held none)."""
        check_alias(alias)
        with self.read() as session:
            model_row = get_model_row(session, name)
            entry = session.exec(
                select(AliasHistoryRow)
                .where(
                    AliasHistoryRow.model_id == model_row.id,
                    AliasHistoryRow.alias == alias,
                    col(AliasHistoryRow.created_at) <= when,
                )
                .order_by(col(AliasHistoryRow.id).desc())
            ).first()
            if entry is None or entry.to_version is None:
                return None
            row = get_version_row(session, model_row, entry.to_version)
            return self._version_entity(session, row, model_row)


def _move_entity(row: AliasHistoryRow, model: str) -> AliasMove:
    return AliasMove(
        id=row.id,
        model=model,
        alias=row.alias,
        action=row.action,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        reason=row.reason,
        created_at=row.created_at,
    )
