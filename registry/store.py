"""The registry's store: resource verbs over SQL tables and a content-addressed artifact store.

Every mutation runs in one transaction that takes the model's row lock (PostgreSQL) or SQLite's
write lock before reading, so concurrent writers serialise and histories stay consistent.
Listeners see each mutation inside that transaction; evalhub writes its audit log through one.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry import json_limits, queries
from registry.artifacts import ArtifactStore, StoredBlob, StoredTree, digest_file
from registry.db import writer
from registry.entities import (
    AliasMove,
    Dataset,
    DatasetFormat,
    DatasetVersion,
    Lineage,
    LineageEdge,
    LineageInput,
    ModelKind,
    ModelVersion,
    Mutation,
    Page,
    RegisteredModel,
    VersionStatus,
)
from registry.errors import ErrorCode, RegistryError, already_exists, conflict, invalid, not_found
from registry.inspect import AdapterInfo, BaseModelInfo, check_adapter_fits_base, inspect_directory
from registry.names import Ref, check_alias, check_name, parse_ref
from registry.queries import load_version
from registry.tables import (
    AliasHistoryRow,
    AliasRow,
    DatasetRow,
    DatasetVersionRow,
    LineageEdgeRow,
    ModelVersionRow,
    RegisteredModelRow,
    stored_id,
    utcnow,
)

MutationListener = Callable[[Session, Mutation], None]
Progress = Callable[[int], None]

MAX_PAGE = 1000


def encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


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


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise invalid(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


class RegistryStore:
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

    # -- registered models ----------------------------------------------------------------------

    def create_model(
        self,
        name: str,
        kind: ModelKind | str,
        *,
        description: str = "",
        tags: dict[str, str] | None = None,
        actor: str = "",
    ) -> RegisteredModel:
        check_name(name)
        kind = _model_kind(kind)
        with self.write() as session:
            if _find_model(session, name) is not None:
                raise already_exists(f"model {name!r} already exists")
            row = RegisteredModelRow(
                name=name,
                kind=kind.value,
                description=description,
                tags=tags or {},
                created_by=actor,
            )
            session.add(row)
            session.flush()
            entity = self._model_entity(session, row)
            self._emit(session, _mutation(actor, "model.create", f"models/{name}", None, entity))
        return entity

    def get_model(self, name: str) -> RegisteredModel:
        with self.read() as session:
            return self._model_entity(session, _get_model(session, name))

    def search_models(
        self,
        *,
        limit: int = 50,
        page_token: str | None = None,
        kind: ModelKind | str | None = None,
        name_contains: str | None = None,
    ) -> Page[RegisteredModel]:
        _check_limit(limit)
        after = decode_page_token(page_token)
        query = select(RegisteredModelRow).order_by(col(RegisteredModelRow.id))
        if after is not None:
            query = query.where(col(RegisteredModelRow.id) > after)
        if kind is not None:
            query = query.where(RegisteredModelRow.kind == _model_kind(kind).value)
        if name_contains:
            query = query.where(col(RegisteredModelRow.name).contains(name_contains))
        with self.read() as session:
            rows = list(session.exec(query.limit(limit + 1)))
            return _page([self._model_entity(session, r) for r in rows[:limit]], rows, limit)

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        actor: str = "",
    ) -> RegisteredModel:
        with self.write() as session:
            row = _get_model(session, name, lock=True)
            before = self._model_entity(session, row)
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = dict(tags)
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            after = self._model_entity(session, row)
            self._emit(session, _mutation(actor, "model.update", f"models/{name}", before, after))
        return after

    def delete_model(self, name: str, *, actor: str = "") -> None:
        """Deletes a model with its versions, aliases and history; refused while others build on it."""
        with self.write() as session:
            row = _get_model(session, name, lock=True)
            before = self._model_entity(session, row)
            version_ids = list(
                session.exec(select(ModelVersionRow.id).where(ModelVersionRow.model_id == row.id))
            )
            if version_ids:
                dependants = session.exec(
                    select(ModelVersionRow).where(
                        col(ModelVersionRow.base_version_id).in_(version_ids),
                        ModelVersionRow.model_id != row.id,
                    )
                ).first()
                if dependants is not None:
                    dependant = session.get(RegisteredModelRow, dependants.model_id)
                    assert dependant is not None
                    raise RegistryError(
                        ErrorCode.FAILED_PRECONDITION,
                        f"model {name!r} cannot be deleted: {dependant.name}/{dependants.version} "
                        "is an adapter on one of its versions; delete or archive that first",
                    )
            for table in (AliasHistoryRow, AliasRow):
                for item in session.exec(select(table).where(table.model_id == row.id)):
                    session.delete(item)
            session.flush()
            for version in session.exec(
                select(ModelVersionRow)
                .where(ModelVersionRow.model_id == row.id)
                .order_by(col(ModelVersionRow.version).desc())
            ):
                session.delete(version)
            session.flush()
            for ref_id in (f"{name}/{v}" for v in range(1, (before.latest_version or 0) + 1)):
                for edge in session.exec(
                    select(LineageEdgeRow).where(
                        (
                            (LineageEdgeRow.source_kind == "model_version")
                            & (LineageEdgeRow.source_id == ref_id)
                        )
                        | (
                            (LineageEdgeRow.target_kind == "model_version")
                            & (LineageEdgeRow.target_id == ref_id)
                        )
                    )
                ):
                    session.delete(edge)
            session.delete(row)
            self._emit(session, _mutation(actor, "model.delete", f"models/{name}", before, None))

    # -- model versions -------------------------------------------------------------------------

    def register_version(
        self,
        name: str,
        directory: Path,
        *,
        base: str | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        source: str | None = None,
        lineage: LineageInput | None = None,
        actor: str = "",
        progress: Progress | None = None,
    ) -> ModelVersion:
        """Copies a model or PEFT adapter directory into the artifact store and numbers it.

        Everything that can refuse the request is checked before a byte is copied, and a copy
        that the final transaction refuses is discarded: a refused request leaves nothing.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise invalid(f"{directory} is not a directory")
        lineage = lineage or LineageInput()
        model = self.get_model(name)
        info = inspect_directory(directory)
        base_version: ModelVersion | None = None
        if isinstance(info, AdapterInfo):
            if model.kind is not ModelKind.ADAPTER:
                raise invalid(
                    f"{directory} holds a PEFT adapter but model {name!r} is of kind 'base'; "
                    "register it under a model of kind 'adapter'"
                )
            if not base:
                raise invalid(
                    "an adapter needs its base model version: pass base='name/version' "
                    f"(the adapter says it was trained on {info.base_model_name_or_path!r})"
                )
            base_version = self._check_base(info, directory, base)
        else:
            if model.kind is not ModelKind.BASE:
                raise invalid(
                    f"{directory} holds a full model (config.json and weights) but model {name!r} "
                    "is of kind 'adapter'; register it under a model of kind 'base'"
                )
            if base:
                raise invalid("base is only for adapters; a full model version has no base")
        dataset_version = self.resolve_dataset(lineage.dataset) if lineage.dataset else None

        stored = self.artifacts.put_tree(directory, progress=progress)
        try:
            with self.write() as session:
                model_row = _get_model(session, name, lock=True)
                number = _next_number(session, ModelVersionRow, "model_id", model_row.id)
                row = ModelVersionRow(
                    model_id=stored_id(model_row),
                    version=number,
                    status=VersionStatus.READY.value,
                    digest=stored.digest,
                    artifact_uri=stored.uri,
                    size_bytes=stored.size_bytes,
                    file_count=stored.file_count,
                    source=source if source is not None else str(directory),
                    description=description,
                    tags=tags or {},
                    created_by=actor,
                    dataset_version_id=_dataset_version_id(session, dataset_version),
                    training_job=lineage.training_job,
                    hyperparameters=lineage.hyperparameters,
                    seed=lineage.seed,
                    code_version=lineage.code_version,
                    metrics=lineage.metrics,
                    **_info_fields(info, base_version, session),
                )
                session.add(row)
                model_row.updated_at = utcnow()
                session.add(model_row)
                session.flush()
                entity = self._version_entity(session, row, model_row)
                if lineage.training_job:
                    _add_edge(
                        session, "training_job", lineage.training_job, "produced",
                        "model_version", entity.ref,
                    )  # fmt: skip
                self._emit(
                    session,
                    _mutation(
                        actor, "version.create", f"models/{name}/versions/{number}", None, entity
                    ),
                )
        except BaseException:
            self._discard_unused(stored)
            raise
        return entity

    def _discard_unused(self, stored: StoredTree | StoredBlob) -> None:
        """Undoes this request's copy unless a committed row (a racing request) now uses it."""
        if not stored.created:
            return
        table = ModelVersionRow if isinstance(stored, StoredTree) else DatasetVersionRow
        with self.read() as session:
            if session.exec(select(table.id).where(table.digest == stored.digest)).first():
                return
        self.artifacts.discard(stored)

    def _check_base(self, info: AdapterInfo, directory: Path, base: str) -> ModelVersion:
        base_version = self.resolve(base)
        if base_version.kind is not ModelKind.BASE:
            raise invalid(f"{base} is an adapter; an adapter's base must be a base model version")
        if base_version.status is not VersionStatus.READY:
            raise RegistryError(
                ErrorCode.FAILED_PRECONDITION,
                f"base {base_version.ref} is {base_version.status.value}, not ready",
            )
        claimed = info.base_model_name_or_path
        if claimed:
            other = self._known_base(claimed)
            if other is not None and other.digest != base_version.digest:
                raise invalid(
                    f"this adapter was trained on {claimed!r} ({other.ref}), not on "
                    f"{base_version.ref}; pass --base {other.ref} or retrain it on {base_version.ref}"
                )
        base_dir = self.artifacts.materialize(base_version.digest)
        check_adapter_fits_base(directory, base_dir, base_version.ref)
        return base_version

    def _known_base(self, claimed: str) -> ModelVersion | None:
        """The registry version an adapter's base_model_name_or_path names, if it names one."""
        try:
            return self.resolve(claimed)
        except RegistryError:
            pass
        with self.read() as session:
            row = session.exec(
                select(ModelVersionRow)
                .where(
                    (ModelVersionRow.source == claimed)
                    | (ModelVersionRow.artifact_uri == claimed)
                    | (ModelVersionRow.digest == claimed)
                )
                .order_by(col(ModelVersionRow.id).desc())
            ).first()
            return self._version_entity(session, row) if row is not None else None

    def get_version(self, name: str, version: int) -> ModelVersion:
        with self.read() as session:
            model_row = _get_model(session, name)
            return self._version_entity(
                session, _get_version(session, model_row, version), model_row
            )

    def search_versions(
        self,
        name: str,
        *,
        limit: int = 50,
        page_token: str | None = None,
        status: VersionStatus | str | None = None,
    ) -> Page[ModelVersion]:
        _check_limit(limit)
        after = decode_page_token(page_token)
        with self.read() as session:
            model_row = _get_model(session, name)
            query = (
                select(ModelVersionRow)
                .where(ModelVersionRow.model_id == model_row.id)
                .order_by(col(ModelVersionRow.id))
            )
            if after is not None:
                query = query.where(col(ModelVersionRow.id) > after)
            if status is not None:
                query = query.where(ModelVersionRow.status == _status(status).value)
            rows = list(session.exec(query.limit(limit + 1)))
            versions = [self._version_entity(session, r, model_row) for r in rows[:limit]]
            return _page(versions, rows, limit)

    def update_version(
        self,
        name: str,
        version: int,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        status: VersionStatus | str | None = None,
        metrics: dict[str, Any] | None = None,
        actor: str = "",
    ) -> ModelVersion:
        with self.write() as session:
            model_row = _get_model(session, name, lock=True)
            row = _get_version(session, model_row, version)
            before = self._version_entity(session, row, model_row)
            if status is not None:
                new_status = _status(status)
                if new_status is not VersionStatus.READY and before.aliases:
                    raise RegistryError(
                        ErrorCode.FAILED_PRECONDITION,
                        f"{before.ref} is @{', @'.join(before.aliases)}; move those aliases "
                        f"before marking it {new_status.value}",
                    )
                row.status = new_status.value
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = dict(tags)
            if metrics is not None:
                row.metrics = {**row.metrics, **metrics}
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            after = self._version_entity(session, row, model_row)
            resource = f"models/{name}/versions/{version}"
            self._emit(session, _mutation(actor, "version.update", resource, before, after))
        return after

    def resolve(self, ref: str | Ref) -> ModelVersion:
        """`name` is the latest ready version, `name/3` version 3, `name@alias` the alias target."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        with self._reader.connect() as connection:
            if parsed.version is not None:
                found = load_version(
                    connection, queries.BY_NUMBER, name=parsed.name, version=parsed.version
                )
            elif parsed.alias is not None:
                found = load_version(
                    connection, queries.BY_ALIAS, name=parsed.name, alias=parsed.alias
                )
            else:
                found = load_version(connection, queries.LATEST_READY, name=parsed.name)
        if found is not None:
            return found
        with self.read() as session:  # only on a miss: say precisely what is missing
            _get_model(session, parsed.name)
        if parsed.version is not None:
            raise not_found(f"model {parsed.name!r} has no version {parsed.version}")
        if parsed.alias is not None:
            raise not_found(f"model {parsed.name!r} has no alias @{parsed.alias}")
        raise not_found(f"model {parsed.name!r} has no ready version yet")

    def resolve_fine_tuned(self, model_id: str) -> ModelVersion:
        """The version an OpenAI-style `ft:<base>:<suffix>:<job id>` id names: the one its
        training job registered, with that id as its `fine_tuned_model` tag."""
        parts = model_id.split(":")
        if len(parts) < 4 or parts[0] != "ft" or len(model_id) > 512:
            raise not_found(
                f"{model_id!r} is not a fine-tuned model id (ft:<base>:<suffix>:<job id>)"
            )
        with self.read() as session:
            rows = session.exec(
                select(ModelVersionRow)
                .where(ModelVersionRow.training_job == parts[3])
                .order_by(col(ModelVersionRow.id))
            )
            for row in rows:
                if row.tags.get("fine_tuned_model") == model_id:
                    return self._version_entity(session, row)
        raise not_found(f"no fine-tuned model {model_id!r}: no version was registered for it")

    def lineage(self, name: str, version: int) -> Lineage:
        entity = self.get_version(name, version)
        base = self.resolve(entity.base) if entity.base else None
        dataset = self.resolve_dataset(entity.dataset) if entity.dataset else None
        with self.read() as session:
            version_row = _get_version(session, _get_model(session, name), version)
            derived_rows = session.exec(
                select(ModelVersionRow, RegisteredModelRow)
                .join(RegisteredModelRow, col(RegisteredModelRow.id) == ModelVersionRow.model_id)
                .where(ModelVersionRow.base_version_id == version_row.id)
                .order_by(col(ModelVersionRow.id))
            )
            derived = [f"{m.name}/{v.version}" for v, m in derived_rows]
            upstream = session.exec(
                select(LineageEdgeRow)
                .where(
                    LineageEdgeRow.target_kind == "model_version",
                    LineageEdgeRow.target_id == entity.ref,
                )
                .order_by(col(LineageEdgeRow.id))
            )
            downstream = session.exec(
                select(LineageEdgeRow)
                .where(
                    LineageEdgeRow.source_kind == "model_version",
                    LineageEdgeRow.source_id == entity.ref,
                )
                .order_by(col(LineageEdgeRow.id))
            )
            return Lineage(
                version=entity,
                base=base,
                dataset=dataset,
                derived=derived,
                upstream=[_edge_entity(e) for e in upstream],
                downstream=[_edge_entity(e) for e in downstream],
            )

    def add_lineage_edge(
        self,
        source: tuple[str, str],
        relation: str,
        target: tuple[str, str],
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Records that something outside the registry (a job, an eval run) relates to a version."""
        with self.write() as session:
            _add_edge(session, *source, relation, *target, attributes=attributes)

    # -- aliases --------------------------------------------------------------------------------

    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str = "", actor: str = ""
    ) -> AliasMove:
        check_alias(alias)
        with self.write() as session:
            model_row = _get_model(session, name, lock=True)
            target = _get_version(session, model_row, version)
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
            model_row = _get_model(session, name, lock=True)
            return self._move(session, model_row, alias, None, "delete", reason, actor)

    def rollback_alias(
        self, name: str, alias: str, *, reason: str = "", actor: str = ""
    ) -> AliasMove:
        """Points the alias back at the version it held before its last move."""
        check_alias(alias)
        with self.write() as session:
            model_row = _get_model(session, name, lock=True)
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
            target = _get_version(session, model_row, last.from_version)
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
            _mutation(
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
        _check_limit(limit)
        after = decode_page_token(page_token)
        with self.read() as session:
            model_row = _get_model(session, name)
            query = (
                select(AliasHistoryRow)
                .where(AliasHistoryRow.model_id == model_row.id, AliasHistoryRow.alias == alias)
                .order_by(col(AliasHistoryRow.id))
            )
            if after is not None:
                query = query.where(col(AliasHistoryRow.id) > after)
            rows = list(session.exec(query.limit(limit + 1)))
            return _page([_move_entity(r, name) for r in rows[:limit]], rows, limit)

    def alias_at(self, name: str, alias: str, when: datetime) -> ModelVersion | None:
        """Which version held the alias at `when` (None if it held none)."""
        check_alias(alias)
        with self.read() as session:
            model_row = _get_model(session, name)
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
            row = _get_version(session, model_row, entry.to_version)
            return self._version_entity(session, row, model_row)

    # -- datasets -------------------------------------------------------------------------------

    def create_dataset(
        self,
        name: str,
        *,
        description: str = "",
        tags: dict[str, str] | None = None,
        actor: str = "",
    ) -> Dataset:
        check_name(name, "dataset")
        with self.write() as session:
            if _find_dataset(session, name) is not None:
                raise already_exists(f"dataset {name!r} already exists")
            row = DatasetRow(name=name, description=description, tags=tags or {}, created_by=actor)
            session.add(row)
            session.flush()
            entity = _dataset_entity(session, row)
            self._emit(
                session, _mutation(actor, "dataset.create", f"datasets/{name}", None, entity)
            )
        return entity

    def get_dataset(self, name: str) -> Dataset:
        with self.read() as session:
            return _dataset_entity(session, _get_dataset(session, name))

    def search_datasets(self, *, limit: int = 50, page_token: str | None = None) -> Page[Dataset]:
        _check_limit(limit)
        after = decode_page_token(page_token)
        query = select(DatasetRow).order_by(col(DatasetRow.id))
        if after is not None:
            query = query.where(col(DatasetRow.id) > after)
        with self.read() as session:
            rows = list(session.exec(query.limit(limit + 1)))
            return _page([_dataset_entity(session, r) for r in rows[:limit]], rows, limit)

    def add_dataset_version(
        self,
        name: str,
        path: Path,
        *,
        format: DatasetFormat | str,
        split: str | None = None,
        filename: str | None = None,
        create: bool = False,
        actor: str = "",
        progress: Progress | None = None,
    ) -> tuple[DatasetVersion, bool]:
        """Stores a JSONL file by content; the same content again returns the existing version."""
        check_name(name, "dataset")
        dataset_format = _dataset_format(format)
        if split is not None:
            check_name(split, "split")
        row_count = check_jsonl(Path(path), dataset_format, label=filename)
        digest = digest_file(Path(path))
        with self.read() as session:
            dataset_row = _find_dataset(session, name)
            if dataset_row is None and not create:
                raise not_found(f"dataset {name!r} does not exist; create it first")
            if dataset_row is not None:
                existing = _find_dataset_version_by_digest(session, dataset_row, digest)
                if existing is not None:
                    return _dataset_version_entity(existing, name), False
        stored = self.artifacts.put_file(Path(path), progress=progress)
        try:
            with self.write() as session:
                dataset_row = _find_dataset(session, name, lock=True)
                if dataset_row is None:
                    dataset_row = DatasetRow(name=name, created_by=actor)
                    session.add(dataset_row)
                    session.flush()
                    created = _dataset_entity(session, dataset_row)
                    self._emit(
                        session,
                        _mutation(actor, "dataset.create", f"datasets/{name}", None, created),
                    )
                existing = _find_dataset_version_by_digest(session, dataset_row, digest)
                if existing is not None:
                    return _dataset_version_entity(existing, name), False
                number = _next_number(session, DatasetVersionRow, "dataset_id", dataset_row.id)
                row = DatasetVersionRow(
                    dataset_id=stored_id(dataset_row),
                    version=number,
                    digest=stored.digest,
                    artifact_uri=stored.uri,
                    format=dataset_format.value,
                    split=split,
                    row_count=row_count,
                    size_bytes=stored.size_bytes,
                    filename=filename if filename is not None else Path(path).name,
                    created_by=actor,
                )
                session.add(row)
                session.flush()
                entity = _dataset_version_entity(row, name)
                self._emit(
                    session,
                    _mutation(
                        actor, "dataset_version.create", f"datasets/{name}/versions/{number}",
                        None, entity,
                    ),
                )  # fmt: skip
        except BaseException:
            self._discard_unused(stored)
            raise
        return entity, True

    def get_dataset_version(self, name: str, version: int) -> DatasetVersion:
        return self.resolve_dataset(f"{name}/{version}")

    def search_dataset_versions(
        self, name: str, *, limit: int = 50, page_token: str | None = None
    ) -> Page[DatasetVersion]:
        _check_limit(limit)
        after = decode_page_token(page_token)
        with self.read() as session:
            dataset_row = _get_dataset(session, name)
            query = (
                select(DatasetVersionRow)
                .where(DatasetVersionRow.dataset_id == dataset_row.id)
                .order_by(col(DatasetVersionRow.id))
            )
            if after is not None:
                query = query.where(col(DatasetVersionRow.id) > after)
            rows = list(session.exec(query.limit(limit + 1)))
            return _page([_dataset_version_entity(r, name) for r in rows[:limit]], rows, limit)

    def resolve_dataset(self, ref: str) -> DatasetVersion:
        """`name` is the latest version, `name/3` version 3."""
        parsed = parse_ref(ref)
        if parsed.alias is not None:
            raise invalid(f"datasets have no aliases: write {parsed.name} or {parsed.name}/N")
        with self.read() as session:
            dataset_row = _get_dataset(session, parsed.name)
            query = select(DatasetVersionRow).where(DatasetVersionRow.dataset_id == dataset_row.id)
            if parsed.version is not None:
                query = query.where(DatasetVersionRow.version == parsed.version)
            row = session.exec(query.order_by(col(DatasetVersionRow.version).desc())).first()
            if row is None:
                raise not_found(
                    f"dataset {parsed.name!r} has no version {parsed.version}"
                    if parsed.version is not None
                    else f"dataset {parsed.name!r} has no versions yet"
                )
            return _dataset_version_entity(row, parsed.name)

    def dataset_path(self, ref: str) -> Path:
        """A local, digest-verified copy of a dataset version's file."""
        return self.artifacts.blob_path(self.resolve_dataset(ref).digest)

    def model_path(self, ref: str) -> Path:
        """A local, digest-verified directory of a model version's files."""
        return self.artifacts.materialize(self.resolve(ref).digest)

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


def check_jsonl(path: Path, dataset_format: DatasetFormat, label: str | None = None) -> int:
    """Counts rows and checks each line is a JSON object of the format; errors name the line."""
    if not path.is_file():
        raise invalid(f"{path} is not a file")
    name = label or path.name
    rows = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json_limits.loads(raw)
            except (ValueError, UnicodeDecodeError) as error:
                raise invalid(f"{name}:{number}: not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise invalid(f"{name}:{number}: each line must be a JSON object")
            if dataset_format is DatasetFormat.CHAT and not isinstance(
                record.get("messages"), list
            ):
                raise invalid(f"{name}:{number}: a chat example needs a 'messages' list")
            if dataset_format is DatasetFormat.EVAL and not (
                "input" in record or isinstance(record.get("messages"), list)
            ):
                raise invalid(f"{name}:{number}: an eval case needs 'input' or 'messages'")
            rows += 1
    if rows == 0:
        raise invalid(f"{name} holds no rows")
    return rows


def _mutation(actor: str, action: str, resource: str, before: Any, after: Any) -> Mutation:
    def dump(value: BaseModel | dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None or isinstance(value, dict):
            return value
        return value.model_dump(mode="json")

    return Mutation(
        actor=actor, action=action, resource=resource, before=dump(before), after=dump(after)
    )


def _page(items: list[Any], rows: list[Any], limit: int) -> Page[Any]:
    token = encode_page_token(rows[limit - 1].id) if len(rows) > limit else None
    return Page(data=items, next_page_token=token)


def _model_kind(kind: ModelKind | str) -> ModelKind:
    try:
        return ModelKind(kind)
    except ValueError as error:
        raise invalid(f"invalid model kind {kind!r}: use 'base' or 'adapter'") from error


def _status(status: VersionStatus | str) -> VersionStatus:
    try:
        return VersionStatus(status)
    except ValueError as error:
        known = ", ".join(s.value for s in VersionStatus)
        raise invalid(f"invalid status {status!r}: use one of {known}") from error


def _dataset_format(value: DatasetFormat | str) -> DatasetFormat:
    try:
        return DatasetFormat(value)
    except ValueError as error:
        raise invalid(f"invalid dataset format {value!r}: use 'chat' or 'eval'") from error


def _find_model(session: Session, name: str, *, lock: bool = False) -> RegisteredModelRow | None:
    query = select(RegisteredModelRow).where(RegisteredModelRow.name == name)
    if lock:
        query = query.with_for_update()
    return session.exec(query).first()


def _get_model(session: Session, name: str, *, lock: bool = False) -> RegisteredModelRow:
    row = _find_model(session, name, lock=lock)
    if row is None:
        raise not_found(f"model {name!r} does not exist")
    return row


def _get_version(session: Session, model_row: RegisteredModelRow, version: int) -> ModelVersionRow:
    row = session.exec(
        select(ModelVersionRow).where(
            ModelVersionRow.model_id == model_row.id, ModelVersionRow.version == version
        )
    ).first()
    if row is None:
        raise not_found(f"model {model_row.name!r} has no version {version}")
    return row


def _find_dataset(session: Session, name: str, *, lock: bool = False) -> DatasetRow | None:
    query = select(DatasetRow).where(DatasetRow.name == name)
    if lock:
        query = query.with_for_update()
    return session.exec(query).first()


def _get_dataset(session: Session, name: str) -> DatasetRow:
    row = _find_dataset(session, name)
    if row is None:
        raise not_found(f"dataset {name!r} does not exist")
    return row


def _find_dataset_version_by_digest(
    session: Session, dataset_row: DatasetRow, digest: str
) -> DatasetVersionRow | None:
    return session.exec(
        select(DatasetVersionRow).where(
            DatasetVersionRow.dataset_id == dataset_row.id, DatasetVersionRow.digest == digest
        )
    ).first()


def _next_number(session: Session, table: Any, parent_column: str, parent_id: int | None) -> int:
    current = session.exec(
        select(func.max(table.version)).where(getattr(table, parent_column) == parent_id)
    ).one()
    return (current or 0) + 1


def _dataset_version_id(session: Session, version: DatasetVersion | None) -> int | None:
    if version is None:
        return None
    row = session.exec(
        select(DatasetVersionRow)
        .join(DatasetRow, col(DatasetRow.id) == DatasetVersionRow.dataset_id)
        .where(DatasetRow.name == version.dataset, DatasetVersionRow.version == version.version)
    ).one()
    return row.id


def _info_fields(
    info: BaseModelInfo | AdapterInfo, base: ModelVersion | None, session: Session
) -> dict[str, Any]:
    if isinstance(info, BaseModelInfo):
        return {
            "architecture": info.architecture,
            "parameter_count": info.parameter_count,
            "dtype": info.dtype,
        }
    assert base is not None
    base_row = session.exec(
        select(ModelVersionRow)
        .join(RegisteredModelRow, col(RegisteredModelRow.id) == ModelVersionRow.model_id)
        .where(RegisteredModelRow.name == base.model, ModelVersionRow.version == base.version)
    ).one()
    return {
        "base_version_id": base_row.id,
        "peft_method": info.peft_method,
        "rank": info.rank,
        "alpha": info.alpha,
        "target_modules": list(info.target_modules) if info.target_modules else None,
        "dropout": info.dropout,
        "modules_to_save": list(info.modules_to_save) if info.modules_to_save else None,
        "trainable_parameters": info.trainable_parameters,
        "trained_on": info.base_model_name_or_path,
    }


def _add_edge(
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


def _edge_entity(row: LineageEdgeRow) -> LineageEdge:
    return LineageEdge(**row.model_dump(exclude={"id"}))


def _dataset_entity(session: Session, row: DatasetRow) -> Dataset:
    latest = session.exec(
        select(func.max(DatasetVersionRow.version)).where(DatasetVersionRow.dataset_id == row.id)
    ).one()
    return Dataset(
        name=row.name,
        description=row.description,
        tags=row.tags,
        latest_version=latest,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _dataset_version_entity(row: DatasetVersionRow, name: str) -> DatasetVersion:
    return DatasetVersion(
        ref=f"{name}/{row.version}",
        dataset=name,
        **row.model_dump(exclude={"id", "dataset_id"}),
    )


__all__ = [
    "MutationListener",
    "RegistryStore",
    "StoredBlob",
    "StoredTree",
    "check_jsonl",
]
