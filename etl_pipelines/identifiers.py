"""Validation of SQL identifiers taken from job parameters; quoting is left to the dialect."""

import re
from dataclasses import dataclass

import sqlalchemy as sa

from etl_pipelines.errors import JobInputError
from etl_pipelines.store.models import Base as JobTableBase
from etl_pipelines.store.schema import VERSION_TABLE

# Plain identifiers only: letters, digits and underscores, not starting with a digit, within
# PostgreSQL's 63-byte limit. Anything else (quotes, spaces, semicolons) is refused, not escaped.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class IdentifierError(JobInputError):
    """A table or column name that is not a plain SQL identifier, or is outside the allowed schemas."""


def check_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a plain SQL identifier, else raise IdentifierError."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise IdentifierError(
            f"invalid {what} {name!r}: use letters, digits and underscores (at most 63, "
            "not starting with a digit)"
        )
    return name


@dataclass(frozen=True)
class TableName:
    """A validated, optionally schema-qualified table name."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, value: str) -> "TableName":
        """Parse `table` or `schema.table`, validating each part."""
        if not isinstance(value, str):
            raise IdentifierError(f"invalid table name {value!r}: expected a string")
        parts = value.split(".")
        if len(parts) > 2:
            raise IdentifierError(f"invalid table name {value!r}: expected table or schema.table")
        if len(parts) == 2:
            schema, name = parts
            return cls(check_identifier(schema, "schema name"), check_identifier(name, "table name"))
        return cls(None, check_identifier(parts[0], "table name"))

    def check_schema(self, allowed: tuple[str, ...]) -> "TableName":
        """This table if a job may touch it (`allowed_table`'s rule), else IdentifierError."""
        return allowed_table(str(self), allowed)

    def quoted(self, dialect: sa.engine.Dialect) -> str:
        """The name quoted by `dialect`'s identifier preparer, ready to place in a statement."""
        preparer = dialect.identifier_preparer
        table = preparer.quote(self.name)
        return f"{preparer.quote_schema(self.schema)}.{table}" if self.schema else table

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


# The schemas holding a PostgreSQL database's own catalogs (pg_catalog, pg_toast, pg_temp_N, ...,
# and information_schema): no job reads or changes them, even when ETL_ALLOWED_SCHEMAS lists one.
SYSTEM_SCHEMA_PREFIX = "pg_"
SYSTEM_SCHEMAS = frozenset({"information_schema"})
# SQLite keeps its catalog in sqlite_* tables of every database file (an allowed schema included).
SYSTEM_TABLE_PREFIX = "sqlite_"
# The schemas an unqualified name resolves to (PostgreSQL's default search_path, SQLite's main
# file): where Dagster's storage and the job table live when they share the target database.
DEFAULT_SCHEMAS = frozenset({"public", "main"})
# Dagster's storage tables (runs, event logs, schedules; dagster 1.x, plus its alembic revision
# table), kept here so the rule needs no Dagster import; a test checks the list against Dagster's
# own SQLAlchemy metadata, so an upgrade that adds a table fails it.
DAGSTER_TABLES = frozenset(
    {
        "alembic_version",
        "asset_check_executions",
        "asset_daemon_asset_evaluations",
        "asset_event_tags",
        "asset_keys",
        "backfill_tags",
        "bulk_actions",
        "concurrency_limits",
        "concurrency_slots",
        "daemon_heartbeats",
        "dynamic_partitions",
        "event_logs",
        "instance_info",
        "instigators",
        "job_ticks",
        "jobs",
        "kvs",
        "pending_steps",
        "run_tags",
        "runs",
        "secondary_indexes",
        "snapshots",
    }
)

# ... and the job table's (etl_jobs, its audit trail, the table line), from its own metadata, with
# its migrations' version table.
RESERVED_TABLES = (
    DAGSTER_TABLES
    | frozenset(t.name for t in JobTableBase.metadata.tables.values())
    | frozenset({VERSION_TABLE})
)


def is_system_schema(schema: str) -> bool:
    """Is `schema` one of the database's catalogs (pg_*, information_schema)?"""
    lowered = schema.lower()
    return lowered.startswith(SYSTEM_SCHEMA_PREFIX) or lowered in SYSTEM_SCHEMAS


def allowed_table(value: str, allowed: tuple[str, ...]) -> TableName:
    """The one rule for every table of the target database a job reads or changes.

    It must be schema-qualified, in ETL_ALLOWED_SCHEMAS (`allowed`), and neither a system catalog
    (refused even if `allowed` lists its schema) nor Dagster's storage or the job table (refused
    even if `allowed` lists `public`). Names are compared case-insensitively, as SQLite does.
    """
    table = TableName.parse(value)
    listed = ", ".join(allowed) or "none"
    if table.schema is None:
        raise IdentifierError(
            f"table {table} is not in an allowed schema: name it as schema.table, in "
            f"ETL_ALLOWED_SCHEMAS ({listed})"
        )
    if is_system_schema(table.schema) or table.name.lower().startswith(SYSTEM_TABLE_PREFIX):
        raise IdentifierError(
            f"table {table} is not in an allowed schema: it is a system catalog, which no job "
            "reads or changes, whatever ETL_ALLOWED_SCHEMAS says"
        )
    if table.schema.lower() in DEFAULT_SCHEMAS and table.name.lower() in RESERVED_TABLES:
        raise IdentifierError(
            f"table {table} is not in an allowed schema: it is Dagster's storage or the job "
            "table, which no job reads or changes, whatever ETL_ALLOWED_SCHEMAS says"
        )
    if table.schema not in allowed:
        raise IdentifierError(
            f"table {table} is not in an allowed schema: jobs only touch schema-qualified "
            f"tables in ETL_ALLOWED_SCHEMAS ({listed})"
        )
    return table


def check_source_table(value: str) -> TableName:
    """A table read from another named database (sync_table, data_import): any schema there,
    but never its system catalogs (an unqualified pg_* name resolves to pg_catalog first)."""
    table = TableName.parse(value)
    system = is_system_schema(table.schema) if table.schema else table.name.lower().startswith("pg_")
    if system or table.name.lower().startswith(SYSTEM_TABLE_PREFIX):
        raise IdentifierError(
            f"source table {table} is a system catalog, which no job reads; name a table of "
            "the source database's own schemas"
        )
    return table
