"""Registered models and their versions: directories stored by content, checked on the way in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from registry import queries
from registry.artifacts import CorruptArtifactError
from registry.dataset_store import DatasetStore
from registry.entities import (
    DatasetVersion,
    LineageInput,
    ModelKind,
    ModelVersion,
    Page,
    RegisteredModel,
    VersionStatus,
)
from registry.errors import ErrorCode, RegistryError, already_exists, invalid, not_found
from registry.inspect import AdapterInfo, BaseModelInfo, check_adapter_fits_base, inspect_directory
from registry.names import Ref, check_name, parse_ref
from registry.paging import decode_page_token, fetch_page, page_of
from registry.queries import load_version
from registry.store_base import (
    Progress,
    add_edge,
    check_limit,
    find_model_row,
    get_model_row,
    get_version_row,
    model_kind,
    mutation_of,
    next_number,
    version_status,
)
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


class ModelStore(DatasetStore):
    """Registered models and their versions (it builds on datasets: a version names one)."""

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
        kind = model_kind(kind)
        with self.write() as session:
            if find_model_row(session, name) is not None:
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
            self._emit(session, mutation_of(actor, "model.create", f"models/{name}", None, entity))
        return entity

    def get_model(self, name: str) -> RegisteredModel:
        with self.read() as session:
            return self._model_entity(session, get_model_row(session, name))

    def search_models(
        self,
        *,
        limit: int = 50,
        page_token: str | None = None,
        kind: ModelKind | str | None = None,
        name_contains: str | None = None,
    ) -> Page[RegisteredModel]:
        check_limit(limit)
        after = decode_page_token(page_token)
        query = select(RegisteredModelRow).order_by(col(RegisteredModelRow.id))
        if after is not None:
            query = query.where(col(RegisteredModelRow.id) > after)
        if kind is not None:
            query = query.where(RegisteredModelRow.kind == model_kind(kind).value)
        if name_contains:
            query = query.where(col(RegisteredModelRow.name).contains(name_contains))
        with self.read() as session:
            rows, more = fetch_page(session, query, limit)
            return page_of(rows, more, lambda r: self._model_entity(session, r))

    def update_model(
        self,
        name: str,
        *,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        actor: str = "",
    ) -> RegisteredModel:
        with self.write() as session:
            row = get_model_row(session, name, lock=True)
            before = self._model_entity(session, row)
            if description is not None:
                row.description = description
            if tags is not None:
                row.tags = dict(tags)
            row.updated_at = utcnow()
            session.add(row)
            session.flush()
            after = self._model_entity(session, row)
            self._emit(session, mutation_of(actor, "model.update", f"models/{name}", before, after))
        return after

    def delete_model(self, name: str, *, actor: str = "") -> None:
        """Deletes a model with its versions, aliases and history; refused while others build on it."""
        with self.write() as session:
            row = get_model_row(session, name, lock=True)
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
            self._emit(session, mutation_of(actor, "model.delete", f"models/{name}", before, None))

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
                model_row = get_model_row(session, name, lock=True)
                number = next_number(session, ModelVersionRow, "model_id", model_row.id)
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
                    add_edge(
                        session, "training_job", lineage.training_job, "produced",
                        "model_version", entity.ref,
                    )  # fmt: skip
                self._emit(
                    session,
                    mutation_of(
                        actor, "version.create", f"models/{name}/versions/{number}", None, entity
                    ),
                )
        except BaseException:
            self._discard_unused(stored)
            raise
        return entity

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
            model_row = get_model_row(session, name)
            return self._version_entity(
                session, get_version_row(session, model_row, version), model_row
            )

    def search_versions(
        self,
        name: str,
        *,
        limit: int = 50,
        page_token: str | None = None,
        status: VersionStatus | str | None = None,
    ) -> Page[ModelVersion]:
        check_limit(limit)
        after = decode_page_token(page_token)
        with self.read() as session:
            model_row = get_model_row(session, name)
            query = (
                select(ModelVersionRow)
                .where(ModelVersionRow.model_id == model_row.id)
                .order_by(col(ModelVersionRow.id))
            )
            if after is not None:
                query = query.where(col(ModelVersionRow.id) > after)
            if status is not None:
                query = query.where(ModelVersionRow.status == version_status(status).value)
            rows, more = fetch_page(session, query, limit)
            return page_of(rows, more, lambda r: self._version_entity(session, r, model_row))

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
            model_row = get_model_row(session, name, lock=True)
            row = get_version_row(session, model_row, version)
            before = self._version_entity(session, row, model_row)
            if status is not None:
                new_status = version_status(status)
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
            self._emit(session, mutation_of(actor, "version.update", resource, before, after))
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
            get_model_row(session, parsed.name)
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

    def model_path(self, ref: str) -> Path:
        """A local, digest-verified directory of a model version's files."""
        version = self.resolve(ref)
        try:
            return self.artifacts.materialize(version.digest)
        except CorruptArtifactError as error:
            raise error.about(f"model version {version.ref}") from None


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
