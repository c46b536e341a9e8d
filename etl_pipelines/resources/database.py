"""The database the jobs work on (ETL_TARGET_DATABASE_URL, by default the job table's database)."""

import os
import threading
import time

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework.identifiers import check_identifier
from etl_pipelines.settings import Settings
from etl_pipelines.store.engine import create_engine

_engines: dict[tuple[int, str, tuple[str, ...]], sa.Engine] = {}
_lock = threading.Lock()


def _sqlite_target_setup(schemas: tuple[str, ...], directory: str, stem: str):
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        # SQLite has no schemas: each allowed schema is an attached database file beside the
        # main one, so `auth.users` means the same table on SQLite as on PostgreSQL.
        for schema in schemas:
            path = os.path.join(directory, f"{stem}.{schema}.sqlite")
            cursor.execute(f"ATTACH DATABASE ? AS {schema}", (path,))
        cursor.close()
        # PostgreSQL's pg_sleep, so SlowQuery behaves alike on the embedded default.
        dbapi_connection.create_function("pg_sleep", 1, lambda seconds: time.sleep(float(seconds)))

    return on_connect


def target_engine(url: str, schemas: tuple[str, ...]) -> sa.Engine:
    """The process's engine for the target database (schemas attached on SQLite)."""
    key = (os.getpid(), url, schemas)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(url)
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (
                None,
                "",
                ":memory:",
            ):
                database = os.path.abspath(parsed.database)
                stem = os.path.splitext(os.path.basename(database))[0]
                setup = _sqlite_target_setup(schemas, os.path.dirname(database), stem)
                sa.event.listen(engine, "connect", setup)
            _engines[key] = engine
        return engine


class TargetDatabase(dg.ConfigurableResource):
    """The database that job types read and change."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; empty means ETL_TARGET_DATABASE_URL, else ETL_DATABASE_URL.",
    )

    def engine(self) -> sa.Engine:
        """An engine for the target database, created once per process."""
        settings = Settings.from_env()
        # Schema names come from configuration and are checked before they reach ATTACH.
        schemas = tuple(check_identifier(s, "schema name") for s in settings.allowed_schemas)
        return target_engine(self.url or settings.target_database_url, schemas)

    def dialect_name(self) -> str:
        return self.engine().dialect.name
