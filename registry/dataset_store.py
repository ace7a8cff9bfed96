"""Datasets and their versions: content-hashed JSONL files, checked line by line."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from registry import json_limits
from registry.artifacts import CorruptArtifactError, digest_file
from registry.dataset_diff import DatasetDiff, diff_datasets
from registry.entities import (
    Dataset,
    DatasetFormat,
    DatasetVersion,
    Page,
)
from registry.errors import already_exists, invalid, not_found
from registry.names import check_name, parse_ref
from registry.paging import decode_page_token, fetch_page, page_of
from registry.store_base import (
    Progress,
    StoreBase,
    check_limit,
    find_dataset_row,
    get_dataset_row,
    mutation_of,
    next_number,
    parse_dataset_format,
)
from registry.tables import (
    DatasetRow,
    DatasetVersionRow,
    stored_id,
)


class DatasetStore(StoreBase):
    """Datasets and their versions."""

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
            if find_dataset_row(session, name) is not None:
                raise already_exists(f"dataset {name!r} already exists")
            row = DatasetRow(name=name, description=description, tags=tags or {}, created_by=actor)
            session.add(row)
            session.flush()
            entity = _dataset_entity(session, row)
            self._emit(
                session, mutation_of(actor, "dataset.create", f"datasets/{name}", None, entity)
            )
        return entity

    def get_dataset(self, name: str) -> Dataset:
        with self.read() as session:
            return _dataset_entity(session, get_dataset_row(session, name))

    def search_datasets(self, *, limit: int = 50, page_token: str | None = None) -> Page[Dataset]:
        check_limit(limit)
        after = decode_page_token(page_token)
        query = select(DatasetRow).order_by(col(DatasetRow.id))
        if after is not None:
            query = query.where(col(DatasetRow.id) > after)
        with self.read() as session:
            rows, more = fetch_page(session, query, limit)
            return page_of(rows, more, lambda r: _dataset_entity(session, r))

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
        dataset_format = parse_dataset_format(format)
        if split is not None:
            check_name(split, "split")
        row_count = check_jsonl(Path(path), dataset_format, label=filename)
        digest = digest_file(Path(path))
        with self.read() as session:
            dataset_row = find_dataset_row(session, name)
            if dataset_row is None and not create:
                raise not_found(f"dataset {name!r} does not exist; create it first")
            if dataset_row is not None:
                existing = _find_dataset_version_by_digest(session, dataset_row, digest)
                if existing is not None:
                    return _dataset_version_entity(existing, name), False
        stored = self.artifacts.put_file(Path(path), progress=progress)
        try:
            with self.write() as session:
                dataset_row = find_dataset_row(session, name, lock=True)
                if dataset_row is None:
                    dataset_row = DatasetRow(name=name, created_by=actor)
                    session.add(dataset_row)
                    session.flush()
                    created = _dataset_entity(session, dataset_row)
                    self._emit(
                        session,
                        mutation_of(actor, "dataset.create", f"datasets/{name}", None, created),
                    )
                existing = _find_dataset_version_by_digest(session, dataset_row, digest)
                if existing is not None:
                    return _dataset_version_entity(existing, name), False
                number = next_number(session, DatasetVersionRow, "dataset_id", dataset_row.id)
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
                    mutation_of(
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
        check_limit(limit)
        after = decode_page_token(page_token)
        with self.read() as session:
            dataset_row = get_dataset_row(session, name)
            query = (
                select(DatasetVersionRow)
                .where(DatasetVersionRow.dataset_id == dataset_row.id)
                .order_by(col(DatasetVersionRow.id))
            )
            if after is not None:
                query = query.where(col(DatasetVersionRow.id) > after)
            rows, more = fetch_page(session, query, limit)
            return page_of(rows, more, lambda r: _dataset_version_entity(r, name))

    def resolve_dataset(self, ref: str) -> DatasetVersion:
        """`name` is the latest version, `name/3` version 3."""
        parsed = parse_ref(ref)
        if parsed.alias is not None:
            raise invalid(f"datasets have no aliases: write {parsed.name} or {parsed.name}/N")
        with self.read() as session:
            dataset_row = get_dataset_row(session, parsed.name)
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
        version = self.resolve_dataset(ref)
        try:
            return self.artifacts.blob_path(version.digest)
        except CorruptArtifactError as error:
            raise error.about(f"dataset version {version.ref}") from None

    def diff_datasets(self, base_ref: str, target_ref: str) -> DatasetDiff:
        """Rows added, removed and changed from `base_ref` to `target_ref`, with contradictions."""
        base, target = self.resolve_dataset(base_ref), self.resolve_dataset(target_ref)
        if base.format != target.format:
            raise invalid(
                f"{base.ref} holds {base.format.value} rows and {target.ref} "
                f"{target.format.value} rows: only versions of one format compare"
            )
        return diff_datasets(
            self.artifacts.blob_path(base.digest),
            self.artifacts.blob_path(target.digest),
            target.format,
            labels=(base.ref, target.ref),
        )


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


def _find_dataset_version_by_digest(
    session: Session, dataset_row: DatasetRow, digest: str
) -> DatasetVersionRow | None:
    return session.exec(
        select(DatasetVersionRow).where(
            DatasetVersionRow.dataset_id == dataset_row.id, DatasetVersionRow.digest == digest
        )
    ).first()


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
