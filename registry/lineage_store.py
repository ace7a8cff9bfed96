"""Lineage: what a version was trained from and on, and what was derived from it."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from registry.entities import (
    Lineage,
    LineageEdge,
)
from registry.model_store import ModelStore
from registry.store_base import add_edge, get_model_row, get_version_row
from registry.tables import (
    LineageEdgeRow,
    ModelVersionRow,
    RegisteredModelRow,
)


class LineageStore(ModelStore):
    """Lineage of versions, and edges to what lies outside the registry."""

    def lineage(self, name: str, version: int) -> Lineage:
        entity = self.get_version(name, version)
        base = self.resolve(entity.base) if entity.base else None
        dataset = self.resolve_dataset(entity.dataset) if entity.dataset else None
        with self.read() as session:
            version_row = get_version_row(session, get_model_row(session, name), version)
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
            add_edge(session, *source, relation, *target, attributes=attributes)


def _edge_entity(row: LineageEdgeRow) -> LineageEdge:
    return LineageEdge(**row.model_dump(exclude={"id"}))
