"""All tables of the one database, for alembic and for tests."""

from __future__ import annotations

from sqlmodel import SQLModel

from evalhub.annotations import tables as annotation_tables
from evalhub.db import tables as evalhub_tables
from evalhub.eval import tables as eval_tables
from evalhub.finetune import tables as finetune_tables
from evalhub.jobs import tables as job_tables
from evalhub.monitoring import drift_tables
from evalhub.monitoring import tables as monitoring_tables
from evalhub.serving import tables as serving_tables
from registry import tables as registry_tables

#: Importing these modules registers their tables on the one metadata; add new table modules here.
TABLE_MODULES = (
    annotation_tables,
    evalhub_tables,
    eval_tables,
    finetune_tables,
    job_tables,
    monitoring_tables,
    drift_tables,
    registry_tables,
    serving_tables,
)

metadata = SQLModel.metadata
