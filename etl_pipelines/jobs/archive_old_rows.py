import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext, JobInputError
from etl_pipelines.identifiers import TableName, allowed_table, check_identifier
from etl_pipelines.lifecycle.admission import table_key
from etl_pipelines.loading.stage import unique_key
from etl_pipelines.settings import Settings


def key_is_unique(inspector: sa.Inspector, table: TableName, column: str) -> bool:
    """Does a primary key, unique constraint or unique index hold `column` alone? JobInputError if
    the table does not exist."""
    try:
        return unique_key(inspector, table, [column])
    except sa.exc.NoSuchTableError:
        raise JobInputError(f"no table {table}") from None


class ArchiveOldRows(BaseJob):
    """Move rows older than N days into an archive table, in batches, each batch atomic."""

    queue: ClassVar[str] = "low"
    destructive: ClassVar[bool] = True
    # Many statements, each under the statement timeout; the attempt as a whole may take hours.
    attempt_seconds: ClassVar[float | None] = 6 * 3600

    table: str = Field(description="schema.table to archive from; schema in ETL_ALLOWED_SCHEMAS.")
    archive_table: str | None = Field(
        default=None,
        description="schema.table to move rows into (created if missing); default <table>_archive.",
    )
    timestamp_column: str = Field(default="created_at", description="Age column (taken as UTC).")
    key_column: str = Field(default="id", description="Unique key column, for batching.")
    older_than_days: float = Field(default=365, ge=0, description="Archive rows older than this.")
    batch_size: int = Field(default=1000, ge=1, le=100_000, description="Rows moved per transaction.")
    pause_seconds: float = Field(default=0, ge=0, le=60, description="Pause between batches (load).")

    def archive(self) -> TableName:
        source = TableName.parse(self.table)
        if self.archive_table:
            return TableName.parse(self.archive_table)
        return TableName(source.schema, check_identifier(f"{source.name}_archive", "table name"))

    def tables(self) -> list[str]:
        return [self.table, str(self.archive())]

    def validate_input(self, settings: Settings) -> None:
        super().validate_input(settings)  # table and archive: schema-qualified, in allowed schemas
        # One table as the target database sees it (SQLite folds case): moving rows into the table
        # they come from would copy each batch and then delete both copies.
        dialect = settings.target_dialect
        if table_key(str(self.archive()), dialect) == table_key(self.table, dialect):
            raise JobInputError(f"archive_table {self.archive()} is the table archived from ({self.table})")
        check_identifier(self.timestamp_column, "column name")
        check_identifier(self.key_column, "column name")

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        source = allowed_table(self.table, ctx.settings.allowed_schemas)
        archive = allowed_table(str(self.archive()), ctx.settings.allowed_schemas)
        # One cutoff for the whole run, naive UTC so it compares alike with timestamp columns.
        cutoff = (datetime.now(UTC) - timedelta(days=self.older_than_days)).replace(tzinfo=None)
        moved = batches = 0
        with ctx.begin() as connection:
            src, dst = source.quoted(connection.dialect), archive.quoted(connection.dialect)
            # Batches select and delete by key: a key shared by two rows would move a row that is
            # not old with an old one. Refused before anything is created or moved.
            if not key_is_unique(sa.inspect(connection), source, self.key_column):
                raise JobInputError(
                    f"key_column {self.key_column!r} is not unique in {source}: give a column with a "
                    "primary key, unique constraint or unique index of its own"
                )
            if connection.dialect.name == "postgresql":
                connection.execute(
                    sa.text(f"CREATE TABLE IF NOT EXISTS {dst} (LIKE {src} INCLUDING DEFAULTS)")
                )
            else:
                empty_copy = f"CREATE TABLE IF NOT EXISTS {dst} AS SELECT * FROM {src} WHERE 0"  # noqa: S608
                connection.execute(sa.text(empty_copy))
            inspector = sa.inspect(connection)
            source_columns = [c["name"] for c in inspector.get_columns(source.name, schema=source.schema)]
            archive_columns = {c["name"] for c in inspector.get_columns(archive.name, schema=archive.schema)}
        missing = [c for c in source_columns if c not in archive_columns]
        if missing:
            raise JobInputError(f"{archive} lacks column(s) {', '.join(missing)} of {source}")
        for column in source_columns:
            check_identifier(column, "column name")
        preparer = connection.dialect.identifier_preparer
        # Named columns, not SELECT *: the two tables' column orders may differ.
        columns = ", ".join(preparer.quote(c) for c in source_columns)
        key, ts = preparer.quote(self.key_column), preparer.quote(self.timestamp_column)
        lock = " FOR UPDATE SKIP LOCKED" if connection.dialect.name == "postgresql" else ""
        # Only validated, dialect-quoted identifiers are placed in these statements.
        select_keys = sa.text(
            f"SELECT {key} FROM {src} WHERE {ts} < :cutoff ORDER BY {key} LIMIT :n{lock}"  # noqa: S608
        )
        copy = sa.text(
            f"INSERT INTO {dst} ({columns}) SELECT {columns} FROM {src} WHERE {key} IN :keys"  # noqa: S608
        ).bindparams(sa.bindparam("keys", expanding=True))
        delete = sa.text(f"DELETE FROM {src} WHERE {key} IN :keys").bindparams(  # noqa: S608
            sa.bindparam("keys", expanding=True)
        )
        # PostgreSQL: one statement per batch, the rows never leave the server.
        move = sa.text(
            f"WITH moved AS (DELETE FROM {src} WHERE {key} IN "  # noqa: S608
            f"(SELECT {key} FROM {src} WHERE {ts} < :cutoff ORDER BY {key} LIMIT :n{lock}) "
            f"RETURNING {columns}) INSERT INTO {dst} ({columns}) SELECT {columns} FROM moved"
        )
        ctx.progress.update(phase="moving", rows_moved=0, batches=0)
        while True:
            # Copy and delete commit together: a crash between batches loses and duplicates nothing.
            with ctx.begin() as connection:
                if connection.dialect.name == "postgresql":
                    count = connection.execute(move, {"cutoff": cutoff, "n": self.batch_size}).rowcount
                else:
                    keys = (
                        connection.execute(select_keys, {"cutoff": cutoff, "n": self.batch_size})
                        .scalars()
                        .all()
                    )
                    if keys:
                        connection.execute(copy, {"keys": keys})
                        connection.execute(delete, {"keys": keys})
                    count = len(keys)
            if not count:
                break
            moved += count
            batches += 1
            ctx.progress.update(rows_moved=moved, batches=batches)
            if self.pause_seconds:
                time.sleep(self.pause_seconds)
        ctx.log.info(f"moved {moved} rows from {source} to {archive} in {batches} batches")
        return {
            "table": str(source),
            "archive_table": str(archive),
            "cutoff": cutoff.isoformat() + "Z",
            "rows_moved": moved,
            "batches": batches,
        }
