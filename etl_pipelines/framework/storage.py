"""dagster-postgres's storage, with pooled connections in every process that opens the instance."""

import os
from typing import Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from etl_pipelines.framework._dagster_internal import POOLED, ConfigurableClassData, cache_schema_checks
from etl_pipelines.settings import Settings
from etl_pipelines.store import schema

# What dagster-webserver sets for itself, for every process (ms; a statement longer than this is
# cancelled: Dagster's own queries take milliseconds).
STATEMENT_TIMEOUT_MS = 60_000
POOL_RECYCLE_SECONDS = 3600
MAX_OVERFLOW = 5


class PooledPostgresStorage(DagsterPostgresStorage):
    """DagsterPostgresStorage whose run, event-log and schedule storages keep their connections.

    dagster-postgres opens a new PostgreSQL connection for every query (NullPool) except in
    dagster-webserver, which pools its own. Measured before this class: dagster-daemon opened 2.8-3.8
    connections per job, a dispatch ~15 (bench/README.md). Named in dagster.yaml as the storage, it
    pools them in the daemon, its code server, the workers and the CLI alike, and answers the run
    storage's schema checks from memory once they hold (each reflects the `runs` table otherwise).
    """

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
    ):
        super().__init__(
            postgres_url=postgres_url,
            should_autocreate_tables=should_autocreate_tables,
            inst_data=inst_data,
            token_provider=token_provider,
        )
        for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
            storage.optimize_for_webserver(
                statement_timeout=STATEMENT_TIMEOUT_MS,
                pool_recycle=POOL_RECYCLE_SECONDS,
                max_overflow=MAX_OVERFLOW,
            )
        cache_schema_checks(self.run_storage)
        setattr(self.run_storage, POOLED, True)
        # Built as soon as a process loads the instance (dagster-daemon, dagster-webserver, the
        # workers' run tasks): a job table older or newer than this code stops the process there,
        # naming the command that fixes it, not at its first submission or sensor tick. (Without
        # ETL_DATABASE_URL no job table is this process's: a tool only reading Dagster's storage.)
        if os.environ.get("ETL_DATABASE_URL"):
            schema.check(Settings.from_env().database_url)
        # DagsterInstance.dispose() disposes the run and event-log storages, which close nothing
        # of a NullPool; pooled connections are closed with them (a test's database can be dropped).
        dispose_run_storage = self.run_storage.dispose

        def dispose() -> None:
            dispose_run_storage()
            for storage in (self.run_storage, self.event_log_storage, self.schedule_storage):
                storage._engine.dispose()  # type: ignore[union-attr]

        self.run_storage.dispose = dispose  # type: ignore[method-assign]

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> "PooledPostgresStorage":
        # dagster-postgres's own returns a plain DagsterPostgresStorage, never a subclass.
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
