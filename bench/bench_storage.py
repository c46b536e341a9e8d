"""Bench-only: etl_pipelines' PooledPostgresStorage as dagster.yaml was meant to build it.

Fixed in etl_pipelines after 395484b (PooledPostgresStorage.from_config_value builds the subclass);
this stands in for the fix when measuring 395484b and earlier.

At 395484b `dagster.yaml` names `etl_pipelines.framework.storage.PooledPostgresStorage`, but the
class inherits `DagsterPostgresStorage.from_config_value`, which returns a plain
`DagsterPostgresStorage(...)`, not `cls(...)`: an instance built from dagster.yaml (the daemon,
its code server, the CLI; the workers and the dispatcher before etl_pipelines pools them itself)
gets no pool and no schema-check cache. This subclass builds itself, so the configuration `p`
(harness.Config) measures what the pooled storage would change; etl_pipelines is not the bench's
to fix.
"""

from dagster_postgres.utils import pg_url_from_config

from etl_pipelines.framework.storage import PooledPostgresStorage as ShippedPooledPostgresStorage


class PooledPostgresStorage(ShippedPooledPostgresStorage):
    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
        )
