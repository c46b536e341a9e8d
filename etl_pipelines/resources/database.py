"""The database the jobs work on (ETL_TARGET_DATABASE_URL, by default the job table's database)."""

import contextlib
import os
import time
from collections.abc import Iterator

import dagster as dg
import sqlalchemy as sa

from etl_pipelines.identifiers import check_identifier
from etl_pipelines.process_cache import ProcessCache
from etl_pipelines.settings import Settings
from etl_pipelines.store.engine import create_engine

engines: ProcessCache[sa.Engine] = ProcessCache(close=lambda engine: engine.dispose())


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
    """The process's engine for a target database (schemas attached on SQLite)."""

    def make() -> sa.Engine:
        engine = create_engine(url)
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            database = os.path.abspath(parsed.database)
            stem = os.path.splitext(os.path.basename(database))[0]
            setup = _sqlite_target_setup(schemas, os.path.dirname(database), stem)
            sa.event.listen(engine, "connect", setup)
        return engine

    return engines.get((url, schemas), make)


class TargetDatabase(dg.ConfigurableResource):
    """The database that job types read and change: ETL_TARGET_DATABASE_URL, else ETL_DATABASE_URL.

    Without config fields on purpose, like JobStoreResource: a launch cannot point a job at
    another database (Dagster refuses run config for a resource that has no fields).
    """

    def engine(self, url: str | None = None) -> sa.Engine:
        """An engine for the target database (or another `url`), created once per process."""
        settings = Settings.from_env()
        # Schema names come from configuration and are checked before they reach ATTACH.
        schemas = tuple(check_identifier(s, "schema name") for s in settings.allowed_schemas)
        return target_engine(url or settings.target_database_url, schemas)

    @contextlib.contextmanager
    def connect(
        self,
        statement_timeout: float | None,
        *,
        url: str | None = None,
        transaction: bool = False,
        autocommit: bool = False,
        application_name: str | None = None,
    ) -> Iterator[sa.Connection]:
        """A pooled connection whose statements PostgreSQL cancels after `statement_timeout`
        seconds, named `application_name` while it is used (recovery ends an attempt's sessions
        by that name). An attempt's own target work goes through its fenced session instead
        (framework/fence.py); this is for the other databases it reads."""
        engine = self.engine(url)
        with engine.connect() as connection:
            if autocommit:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            postgresql = connection.dialect.name == "postgresql"
            named = postgresql and bool(application_name)
            if postgresql and (statement_timeout or named):
                # Session-wide and committed, so it holds for every transaction the job opens
                # on this connection; set again at every checkout, whatever the last job set.
                # Each left as it is when not asked for (NULL: the session's current value).
                connection.execute(
                    sa.text(
                        "SELECT set_config('statement_timeout',"
                        " coalesce(CAST(:ms AS text), current_setting('statement_timeout')), false),"
                        " set_config('application_name',"
                        " coalesce(CAST(:name AS text), current_setting('application_name')), false)"
                    ),
                    {
                        "ms": f"{int(statement_timeout * 1000)}" if statement_timeout else None,
                        "name": application_name if named else None,
                    },
                )
                if not autocommit:
                    connection.commit()
            try:
                if transaction:
                    with connection.begin():
                        yield connection
                else:
                    yield connection
            finally:
                # The pool hands this connection to the next job next: leave no limit or name behind.
                if postgresql and (statement_timeout or named) and not connection.invalidated:
                    if connection.in_transaction():
                        connection.rollback()
                    connection.execute(sa.text("RESET statement_timeout; RESET application_name"))
                    if not autocommit:
                        connection.commit()
