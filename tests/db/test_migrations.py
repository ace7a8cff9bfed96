"""The one migration stream builds exactly the tables the code declares, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from evalhub.db import migrate
from evalhub.db.metadata import metadata
from registry.db import create_engine


def test_head_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    assert differences == [], "write a migration: alembic sees model changes it does not have"
    migrate.upgrade(engine)  # idempotent
    engine.dispose()
