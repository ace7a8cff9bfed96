"""What every resource store shares: the engine, transactions that serialise writers, the
listeners that see each mutation inside its transaction, and row helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry import queries
from registry.artifacts import ArtifactStore, StoredBlob, StoredTree
from registry.db import writer
from registry.entities import (
    DatasetFormat,
    ModelKind,
    ModelVersion,
    Mutation,
    RegisteredModel,
    VersionStatus,
)
from registry.errors import conflict, invalid, not_found
from registry.queries import load_version
from registry.tables import (
    AliasRow,
    DatasetRow,
    DatasetVersionRow,
    LineageEdgeRow,
    ModelVersionRow,
    RegisteredModelRow,
)

MutationListener = Callable[[Session, Mutation], None]
Progress = Callable[[int], None]

MAX_PAGE = 1000


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise invalid(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


class StoreBase:
    """Sessions, listeners and the entity builders the resource stores share."""

    def __init__(
        self,
        engine: Engine,
        artifacts: ArtifactStore,
        listeners: Sequence[MutationListener] = (),
    ) -> None:
        self.engine = engine
        self.artifacts = artifacts
        self._writer = writer(engine)
        # The hot reads need no transaction: on PostgreSQL, autocommit saves BEGIN and ROLLBACK.
        self._reader = (
            engine
            if engine.dialect.name == "sqlite"
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._listeners = list(listeners)

    # -- sessions -------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction that holds the write lock from its first statement."""
        with Session(self._writer, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except IntegrityError as error:
                session.rollback()
                raise conflict(f"the change conflicts with existing data: {error.orig}") from error
            except BaseException:
                session.rollback()
                raise

    def _emit(self, session: Session, mutation: Mutation) -> None:
        for listener in self._listeners:
            listener(session, mutation)

    def add_listener(self, listener: MutationListener) -> None:
        self._listeners.append(listener)

    def _discard_unused(self, stored: StoredTree | StoredBlob) -> None:
        """Undoes this request's copy unless a committed row (a racing request) now uses it."""
        if not stored.created:
            return
        table = ModelVersionRow if isinstance(stored, StoredTree) else DatasetVersionRow
        with self.read() as session:
            if session.exec(select(table.id).where(table.digest == stored.digest)).first():
                return
        self.artifacts.discard(stored)

    # -- entities -------------------------------------------------------------------------------

    def _model_entity(self, session: Session, row: RegisteredModelRow) -> RegisteredModel:
        latest = session.exec(
            select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_id == row.id)
        ).one()
        aliases = session.exec(
            select(AliasRow.alias, ModelVersionRow.version)
            .join(ModelVersionRow, col(ModelVersionRow.id) == AliasRow.version_id)
            .where(AliasRow.model_id == row.id)
        )
        return RegisteredModel(
            name=row.name,
            kind=ModelKind(row.kind),
            description=row.description,
            tags=row.tags,
            latest_version=latest,
            aliases={alias: version for alias, version in aliases},
            created_at=row.created_at,
            updated_at=row.updated_at,
            created_by=row.created_by,
        )

    def _version_entity(
        self,
        session: Session,
        row: ModelVersionRow,
        model_row: RegisteredModelRow | None = None,
    ) -> ModelVersion:
        found = load_version(session.connection(), queries.BY_ID, id=row.id)
        assert found is not None
        return found


# -- helpers ------------------------------------------------------------------------------------


def mutation_of(actor: str, action: str, resource: str, before: Any, after: Any) -> Mutation:
    def dump(value: BaseModel | dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None or isinstance(value, dict):
            return value
        return value.model_dump(mode="json")

    return Mutation(
        actor=actor, action=action, resource=resource, before=dump(before), after=dump(after)
    )


def model_kind(kind: ModelKind | str) -> ModelKind:
    try:
        return ModelKind(kind)
    except ValueError as error:
        raise invalid(f"invalid model kind {kind!r}: use 'base' or 'adapter'") from error


def version_status(status: VersionStatus | str) -> VersionStatus:
    try:
        return VersionStatus(status)
    except ValueError as error:
        known = ", ".join(s.value for s in VersionStatus)
        raise invalid(f"invalid status {status!r}: use one of {known}") from error


def parse_dataset_format(value: DatasetFormat | str) -> DatasetFormat:
    try:
        return DatasetFormat(value)
    except ValueError as error:
        raise invalid(f"invalid dataset format {value!r}: use 'chat' or 'eval'") from error


def find_model_row(session: Session, name: str, *, lock: bool = False) -> RegisteredModelRow | None:
    query = select(RegisteredModelRow).where(RegisteredModelRow.name == name)
    if lock:
        query = query.with_for_update()
    return session.exec(query).first()


def get_model_row(session: Session, name: str, *, lock: bool = False) -> RegisteredModelRow:
    row = find_model_row(session, name, lock=lock)
    if row is None:
        raise not_found(f"model {name!r} does not exist")
    return row


def get_version_row(
    session: Session, model_row: RegisteredModelRow, version: int
) -> ModelVersionRow:
    row = session.exec(
        select(ModelVersionRow).where(
            ModelVersionRow.model_id == model_row.id, ModelVersionRow.version == version
        )
    ).first()
    if row is None:
        raise not_found(f"model {model_row.name!r} has no version {version}")
    return row


def find_dataset_row(session: Session, name: str, *, lock: bool = False) -> DatasetRow | None:
    query = select(DatasetRow).where(DatasetRow.name == name)
    if lock:
        query = query.with_for_update()
    return session.exec(query).first()


def get_dataset_row(session: Session, name: str) -> DatasetRow:
    row = find_dataset_row(session, name)
    if row is None:
        raise not_found(f"dataset {name!r} does not exist")
    return row


def next_number(session: Session, table: Any, parent_column: str, parent_id: int | None) -> int:
    current = session.exec(
        select(func.max(table.version)).where(getattr(table, parent_column) == parent_id)
    ).one()
    return (current or 0) + 1


def add_edge(
    session: Session,
    source_kind: str,
    source_id: str,
    relation: str,
    target_kind: str,
    target_id: str,
    attributes: dict[str, Any] | None = None,
) -> None:
    exists = session.exec(
        select(LineageEdgeRow).where(
            LineageEdgeRow.source_kind == source_kind,
            LineageEdgeRow.source_id == source_id,
            LineageEdgeRow.relation == relation,
            LineageEdgeRow.target_kind == target_kind,
            LineageEdgeRow.target_id == target_id,
        )
    ).first()
    if exists is None:
        session.add(
            LineageEdgeRow(
                source_kind=source_kind,
                source_id=source_id,
                relation=relation,
                target_kind=target_kind,
                target_id=target_id,
                attributes=attributes or {},
            )
        )
