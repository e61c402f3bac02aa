"""Alembic environment: run with the connection handed over in ``config.attributes``
(see pipelines.store.results.migrate) or with ``sqlalchemy.url``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from pipelines.store.schema import VERSION_TABLE, metadata

config = context.config


def _run(connection: sa.Connection) -> None:
    # its own version table: the store may share a database with MLflow or Optuna, whose
    # Alembic histories live in the default `alembic_version`
    context.configure(
        connection=connection, target_metadata=metadata, render_as_batch=True, version_table=VERSION_TABLE
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
