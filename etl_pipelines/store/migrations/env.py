"""Alembic's entry point for the job table's migrations.

store.schema.upgrade runs them on a connection it passes in `config.attributes["connection"]`,
inside its transaction and lock. Run by hand (`alembic revision --autogenerate`, with
store.schema.alembic_config), it connects to ETL_DATABASE_URL.
"""

import os

import sqlalchemy as sa
from alembic import context

from etl_pipelines.store.models import Base
from etl_pipelines.store.schema import VERSION_TABLE, include_name


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # Not Alembic's default `alembic_version`: Dagster's storage keeps its own there, in the
        # same PostgreSQL database.
        version_table=VERSION_TABLE,
        # Only the job table's own tables: Dagster's (runs, event_logs, ...) are none of ours.
        include_name=include_name,
        # SQLite cannot ALTER most things: batch operations copy the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported: use `etl-jobs db upgrade`")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():  # the caller's transaction: nothing of its own
            context.run_migrations()
        return
    from etl_pipelines.store.engine import create_engine

    url = os.environ.get("ETL_DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ETL_DATABASE_URL to the job table's database")
    engine = create_engine(url)
    with engine.connect() as own:
        _configure(own)
        with context.begin_transaction():
            context.run_migrations()


run()
