"""Prebuilt SQL for the hot reads: a version with its model, base and dataset in one statement.

Resolving `name@production` happens on every routed request, so it must cost well under a
millisecond in process: one joined SELECT built once, run on a plain connection, not the ORM.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select

from registry.entities import ModelKind, ModelVersion, VersionStatus
from registry.tables import (
    AliasRow,
    DatasetRow,
    DatasetVersionRow,
    ModelVersionRow,
    RegisteredModelRow,
)

_versions = ModelVersionRow.__table__  # type: ignore[attr-defined]
_models = RegisteredModelRow.__table__  # type: ignore[attr-defined]
_aliases = AliasRow.__table__  # type: ignore[attr-defined]
_base_versions = _versions.alias("base_version")
_base_models = _models.alias("base_model")
_dataset_versions = DatasetVersionRow.__table__  # type: ignore[attr-defined]
_datasets = DatasetRow.__table__  # type: ignore[attr-defined]

_INTERNAL = {"id", "model_id", "base_version_id", "dataset_version_id"}
_PUBLIC_COLUMNS = [column.name for column in _versions.c if column.name not in _INTERNAL]


def _version_select() -> Select[Any]:
    joined = (
        _versions.join(_models, _models.c.id == _versions.c.model_id)
        .outerjoin(_base_versions, _base_versions.c.id == _versions.c.base_version_id)
        .outerjoin(_base_models, _base_models.c.id == _base_versions.c.model_id)
        .outerjoin(_dataset_versions, _dataset_versions.c.id == _versions.c.dataset_version_id)
        .outerjoin(_datasets, _datasets.c.id == _dataset_versions.c.dataset_id)
    )
    # The version's aliases in the same round trip: string_agg on PostgreSQL, group_concat on
    # SQLite (alias names hold no comma).
    aliases = (
        select(func.aggregate_strings(_aliases.c.alias, ","))
        .where(_aliases.c.version_id == _versions.c.id)
        .scalar_subquery()
    )
    return select(
        _versions,
        aliases.label("alias_names"),
        _models.c.name.label("model_name"),
        _models.c.kind.label("model_kind"),
        _base_models.c.name.label("base_name"),
        _base_versions.c.version.label("base_number"),
        _base_versions.c.digest.label("base_digest_"),
        _datasets.c.name.label("dataset_name"),
        _dataset_versions.c.version.label("dataset_number"),
    ).select_from(joined)


_SELECT = _version_select()
BY_ID = _SELECT.where(_versions.c.id == bindparam("id"))
BY_NUMBER = _SELECT.where(
    _models.c.name == bindparam("name"), _versions.c.version == bindparam("version")
)
BY_ALIAS = _SELECT.where(
    _versions.c.id
    == select(_aliases.c.version_id)
    .where(_aliases.c.model_id == _models.c.id, _aliases.c.alias == bindparam("alias"))
    .scalar_subquery(),
    _models.c.name == bindparam("name"),
)
LATEST_READY = (
    _SELECT.where(_models.c.name == bindparam("name"), _versions.c.status == VersionStatus.READY)
    .order_by(_versions.c.version.desc())
    .limit(1)
)


def load_version(
    connection: Connection, statement: Select[Any], **params: Any
) -> ModelVersion | None:
    row = connection.execute(statement, params).mappings().first()
    if row is None:
        return None
    return version_entity(row, sorted(row["alias_names"].split(",")) if row["alias_names"] else [])


def version_entity(row: Any, aliases: list[str]) -> ModelVersion:
    fields = {key: row[key] for key in _PUBLIC_COLUMNS}
    base = f"{row['base_name']}/{row['base_number']}" if row["base_name"] else None
    dataset = f"{row['dataset_name']}/{row['dataset_number']}" if row["dataset_name"] else None
    return ModelVersion(
        **fields,
        ref=f"{row['model_name']}/{row['version']}",
        model=row["model_name"],
        kind=ModelKind(row["model_kind"]),
        aliases=aliases,
        base=base,
        base_digest=row["base_digest_"],
        dataset=dataset,
    )
