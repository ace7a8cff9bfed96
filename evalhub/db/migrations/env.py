"""Alembic environment: the engine comes from evalhub (config.attributes) or EVALHUB_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from evalhub.db.metadata import metadata
from registry.db import create_engine, writer


def _engine():  # type: ignore[no-untyped-def]
    engine = context.config.attributes.get("engine")
    if engine is not None:
        return engine
    from evalhub.settings import Settings

    return create_engine(Settings().resolved_database_url)


def run_migrations_online() -> None:
    with writer(_engine()).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
