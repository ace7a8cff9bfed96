"""All tables of the one database, for alembic and for tests."""

from __future__ import annotations

from sqlmodel import SQLModel

import registry.tables  # noqa: F401

metadata = SQLModel.metadata
