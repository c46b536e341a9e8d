from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.dialects import postgresql, sqlite

from etl_pipelines.framework import BaseJob, JobContext, JobInputError
from etl_pipelines.identifiers import allowed_table, check_identifier, check_source_table
from etl_pipelines.loading.reader import export_csv
from etl_pipelines.loading.stage import copy_upsert, csv_rows
from etl_pipelines.settings import Settings, SettingsError


def upsert(table: sa.Table, dialect: str, key: str) -> Any:
    """INSERT ... ON CONFLICT (key) DO UPDATE for PostgreSQL and SQLite."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    return insert.on_conflict_do_update(
        index_elements=[key],
        set_={c.name: insert.excluded[c.name] for c in table.columns if c.name != key},
    )


class SyncTable(BaseJob):
    """Copy new and changed rows of a table from another database (by key and updated-at)."""

    queue: ClassVar[str] = "low"
    destructive: ClassVar[bool] = True
    # Many statements, each under the statement timeout; the attempt as a whole may take hours.
    attempt_seconds: ClassVar[float | None] = 6 * 3600

    source_database: str = Field(description="Named database to copy from (ETL_DATABASE_URL_<NAME>).")
    source_table: str = Field(
        description="Table or schema.table in the source database (never a system catalog)."
    )
    target_table: str = Field(description="schema.table to update (created if missing); allowed schema.")
    key_column: str = Field(default="id", description="Unique key shared by both tables.")
    updated_at_column: str = Field(default="updated_at", description="Last-change timestamp column.")
    batch_size: int = Field(default=10_000, ge=1, le=100_000, description="Rows upserted per transaction.")

    def target(self) -> str:
        return self.target_table

    def validate_input(self, settings: Settings) -> None:
        check_identifier(self.source_database, "database name")
        check_source_table(self.source_table)  # any schema of that database, never its catalogs
        super().validate_input(settings)  # the target: schema-qualified, in an allowed schema
        check_identifier(self.key_column, "column name")
        check_identifier(self.updated_at_column, "column name")

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        try:
            source_url = ctx.settings.named_database_url(self.source_database)
        except SettingsError as exc:
            raise JobInputError(str(exc)) from None
        source_name = check_source_table(self.source_table)
        target_name = allowed_table(self.target_table, ctx.settings.allowed_schemas)
        with ctx.connect(source_url) as connection:
            source = sa.Table(
                source_name.name, sa.MetaData(), schema=source_name.schema, autoload_with=connection
            )
        for column in (self.key_column, self.updated_at_column):
            if column not in source.columns:
                raise JobInputError(f"{self.source_table} has no column {column!r}")
        for source_column in source.columns:  # they name the target's columns, in its statements
            check_identifier(source_column.name, "column name")
        target = sa.Table(
            target_name.name,
            sa.MetaData(),
            *(
                sa.Column(c.name, c.type.as_generic(), primary_key=c.name == self.key_column)
                for c in source.columns
            ),
            schema=target_name.schema,
        )
        stamp = target.c[self.updated_at_column]
        with ctx.begin() as connection:
            target.create(connection, checkfirst=True)
            watermark = connection.execute(sa.select(sa.func.max(stamp))).scalar()
            empty = connection.execute(sa.select(sa.literal(1)).select_from(target).limit(1)).first() is None
        # >= rather than >: rows sharing the watermark's timestamp may straddle an earlier batch;
        # the upsert makes copying them again harmless.
        query = sa.select(source).order_by(source.c[self.updated_at_column], source.c[self.key_column])
        if watermark is not None:
            query = query.where(source.c[self.updated_at_column] >= watermark)
        columns = [c.name for c in source.columns]
        ctx.progress.update(phase="copying", rows_read=0, rows_inserted=0, rows_updated=0)
        with ctx.connect(source_url) as source_connection, ctx.connect() as probe:
            both_postgresql = source_connection.dialect.name == probe.dialect.name == "postgresql"
        if both_postgresql:
            inserted, updated = self._copy(ctx, source_url, query, target, columns, empty)
        else:
            inserted, updated = self._upsert_batches(ctx, source_url, query, target)
        return {
            "source": f"{self.source_database}:{self.source_table}",
            "target_table": self.target_table,
            "watermark": watermark.isoformat() if watermark is not None else None,
            "rows_inserted": inserted,
            "rows_updated": updated,
        }

    def _copy(
        self,
        ctx: JobContext,
        source_url: str,
        query: sa.Select,
        target: sa.Table,
        columns: list[str],
        empty: bool,
    ) -> tuple[int, int]:
        """PostgreSQL to PostgreSQL: the source's COPY TO streamed, batch by batch, into a stage by
        COPY FROM and upserted from there in one statement (each batch one transaction). Into a
        target that was empty when the sync began (its first sync), straight into it by COPY:
        the source's keys are distinct, nothing to update."""
        inserted = updated = read = 0
        with ctx.connect(source_url) as source_connection:
            compiled = query.compile(source_connection)
            # Text both ways: dates and times in ISO form whatever the servers' DateStyle says.
            source_connection.execute(sa.text("SET datestyle = 'ISO, YMD'"))
            with export_csv(
                source_connection, str(compiled), compiled.params, columns, f"export-{ctx.job_id}"
            ) as pipe:
                try:
                    for rows in csv_rows(pipe.reader, columns, self.batch_size):
                        with ctx.begin() as connection:
                            added, changed = copy_upsert(
                                connection, target, self.key_column, rows, fresh=empty
                            )
                        inserted, updated, read = inserted + added, updated + changed, read + rows.num_rows
                        ctx.progress.update(rows_read=read, rows_inserted=inserted, rows_updated=updated)
                except Exception as exc:
                    pipe.raise_error(cause=exc)
                    raise
                pipe.raise_error()
        return inserted, updated

    def _upsert_batches(
        self, ctx: JobContext, source_url: str, query: sa.Select, target: sa.Table
    ) -> tuple[int, int]:
        """Any other pair of databases: a server-side cursor, upserted batch by batch."""
        key = target.c[self.key_column]
        inserted = updated = 0
        with ctx.connect(source_url) as source_connection:
            result = source_connection.execute(query.execution_options(yield_per=self.batch_size))
            for batch in result.mappings().partitions(self.batch_size):
                rows = [dict(row) for row in batch]
                with ctx.begin() as connection:
                    keys = [row[self.key_column] for row in rows]
                    existing = set(connection.execute(sa.select(key).where(key.in_(keys))).scalars())
                    connection.execute(upsert(target, connection.dialect.name, self.key_column), rows)
                updated += len(existing)
                inserted += len(rows) - len(existing)
                ctx.progress.update(
                    rows_read=inserted + updated, rows_inserted=inserted, rows_updated=updated
                )
        return inserted, updated
