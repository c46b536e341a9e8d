import codecs
import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext, JobInputError
from etl_pipelines.identifiers import TableName, allowed_table, check_identifier, check_source_table
from etl_pipelines.lifecycle.admission import table_key
from etl_pipelines.loading.columns import COLUMN_TYPES
from etl_pipelines.loading.reader import TextBatch, csv_batches, export_csv, read_header
from etl_pipelines.loading.rejects import Rejects, keep_rejects
from etl_pipelines.loading.stage import (
    RESERVED_COLUMNS,
    Counts,
    Stage,
    duplicates,
    typed_batches,
    unique_key,
)
from etl_pipelines.settings import Settings, SettingsError

# A few bad lines in a large export are loaded around and counted; more than one row in ten is
# a broken file (wrong delimiter, shifted columns, another export's layout), not dirty data.
DEFAULT_MAX_REJECTED_SHARE = 0.1


class DataImport(BaseJob):
    """Load a CSV file or another database's table into a table: streamed, typed, one transaction."""

    queue: ClassVar[str] = "medium"
    destructive: ClassVar[bool] = True
    # The whole load is one transaction; its stage is filled by COPY statements of 64 MiB each,
    # and the merge of a large file is one INSERT ... SELECT that may take longer than the default
    # statement timeout (5 min): an hour per statement, six for the attempt.
    timeout_seconds: ClassVar[float | None] = 3600
    attempt_seconds: ClassVar[float | None] = 6 * 3600

    source_csv: str | None = Field(
        default=None, description="CSV file (with a header row), relative to ETL_IMPORT_DIR."
    )
    source_database: str | None = Field(
        default=None, description="Named database (ETL_DATABASE_URL_<NAME>) to read source_table from."
    )
    source_table: str | None = Field(default=None, description="Table to read from source_database.")
    target_table: str = Field(
        description="schema.table to load into (created if missing); schema in ETL_ALLOWED_SCHEMAS."
    )
    columns: dict[str, str] = Field(
        description="Columns to load and their types (int, float, str, bool, date, datetime)."
    )
    key_columns: list[str] = Field(
        default_factory=list,
        description="Rows with equal keys are duplicates (the first in the source is kept) and "
        "replace the target's row with those keys (an upsert: the keys must be the target's primary "
        "key or a unique constraint; a table created by the import gets them as its primary key); "
        "empty: equal whole rows are duplicates, and rows are appended.",
    )
    encoding: str = Field(
        default="utf-8",
        description="The CSV file's text encoding (Python's codec names: utf-8, latin-1, cp1252, ...); "
        "with utf-8, a row holding bytes that are not UTF-8 is rejected.",
    )
    reject_table: str | None = Field(
        default=None,
        description="schema.table that receives the rejected rows (line, reason, text; the first 1,000 "
        "of each attempt, replacing the job's earlier ones), created if missing; default "
        "<target_table>_rejects.",
    )
    replace: bool = Field(
        default=False, description="Delete the target's rows before loading (refused with no rows to load)."
    )
    max_rejected_share: float = Field(
        default=DEFAULT_MAX_REJECTED_SHARE,
        ge=0,
        le=1,
        description="Refuse the load, leaving the target unchanged, when more than this share of "
        "the rows read is rejected (unparseable values, malformed lines); 0: any rejected row, "
        "1: never.",
    )
    aggregate_by: str | None = Field(
        default=None,
        description="After success, the aggregate_after_import sensor queues a data_aggregation "
        "of the target grouped by this column.",
    )
    aggregate_value: str | None = Field(
        default=None, description="The column that aggregation sums (with aggregate_by)."
    )

    def target(self) -> str:
        return self.target_table

    def rejects(self) -> TableName:
        if self.reject_table:
            return TableName.parse(self.reject_table)
        target = TableName.parse(self.target_table)
        name = f"{target.name}_rejects"
        if len(name) > 63:
            raise JobInputError(f"{name} would be longer than 63 characters: give reject_table")
        return TableName(target.schema, check_identifier(name, "table name"))

    def tables(self) -> list[str]:
        return [self.target_table, str(self.rejects())]

    def validate_input(self, settings: Settings) -> None:
        super().validate_input(settings)  # the target: schema-qualified, in an allowed schema
        if (self.source_csv is None) == (self.source_table is None):
            raise JobInputError("give either source_csv or source_database with source_table")
        if self.source_table is not None:
            if not self.source_database:
                raise JobInputError("source_table needs source_database")
            check_source_table(self.source_table)  # any schema of that database, never its catalogs
            check_identifier(self.source_database, "database name")
        if not self.columns:
            raise JobInputError("columns must name at least one column")
        for name, kind in self.columns.items():
            check_identifier(name, "column name")
            if name.lower() in RESERVED_COLUMNS:
                raise JobInputError(f"column {name}: the name is the import's own; rename it in the source")
            if kind not in COLUMN_TYPES:
                raise JobInputError(f"column {name}: unknown type {kind!r}; use {', '.join(COLUMN_TYPES)}")
        for name in [*self.key_columns, *filter(None, [self.aggregate_by, self.aggregate_value])]:
            if name not in self.columns:
                raise JobInputError(f"{name!r} is not among the loaded columns")
        if self.source_csv is not None:
            self.csv_path(settings)
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise JobInputError(f"unknown encoding {self.encoding!r}") from None
        if table_key(str(self.rejects()), settings.target_dialect) == table_key(
            self.target_table, settings.target_dialect
        ):
            raise JobInputError(f"reject_table {self.rejects()} is the target table")

    def csv_path(self, settings: Settings) -> Path:
        """The CSV file, which must lie inside ETL_IMPORT_DIR."""
        if self.source_csv is None:
            raise JobInputError("this import reads a database, not a CSV file")
        base = settings.import_dir.resolve()
        path = (base / self.source_csv).resolve()
        if not path.is_relative_to(base):
            raise JobInputError(f"source_csv {self.source_csv!r} is outside ETL_IMPORT_DIR ({base})")
        return path

    def _source(self, ctx: JobContext) -> Generator[TextBatch, None, None]:
        """The source's loaded columns as text batches (streamed: a few blocks in memory)."""
        if self.source_csv is not None:
            path = self.csv_path(ctx.settings)
            if not path.is_file():
                raise JobInputError(f"no such file: {path}")
            with path.open("rb") as stream:
                header = read_header(stream, self.encoding, path.name)
                yield from csv_batches(
                    stream, list(self.columns), name=path.name, header=header, encoding=self.encoding
                )
            return
        try:
            url = ctx.settings.named_database_url(self.source_database or "")
        except SettingsError as exc:
            raise JobInputError(str(exc)) from None
        name = check_source_table(self.source_table or "")
        with ctx.connect(url) as connection:
            found = {c["name"] for c in sa.inspect(connection).get_columns(name.name, schema=name.schema)}
            missing = sorted(set(self.columns) - found)
            if missing:
                raise JobInputError(f"{self.source_table} has no column(s) {', '.join(missing)}")
            preparer = connection.dialect.identifier_preparer
            query = (
                f"SELECT {', '.join(preparer.quote(c) for c in self.columns)} "  # noqa: S608 (quoted)
                f"FROM {name.quoted(connection.dialect)}"
            )
            columns = list(self.columns)
            with export_csv(connection, query, None, columns, f"export-{ctx.job_id}") as pipe:
                try:
                    yield from csv_batches(
                        pipe.reader, columns, name=str(self.source_table), header=columns, skip_blank=False
                    )
                except Exception as exc:
                    # The export failed first (no access, a lost connection): that is the error,
                    # not the empty or cut stream it left.
                    pipe.raise_error(cause=exc)
                    raise
                pipe.raise_error()

    def result_metadata(self, result: dict[str, Any]) -> dict[str, dg.MetadataValue]:
        shown: dict[str, dg.MetadataValue] = {
            k: dg.MetadataValue.int(v) for k, v in result.items() if k.startswith(("rows_", "dup"))
        }
        rejected = result.get("rejected") or {}
        if rejected.get("first"):
            lines = "\n".join(f"| {r['line']} | {r['reason']} |" for r in rejected["first"])
            shown["rejected rows"] = dg.MetadataValue.md(
                f"{result['rows_rejected']:,} rejected, by kind: {rejected['by_kind']}; the first "
                f"{len(rejected['first'])} (all kept rows in `{result['reject_table']}`):\n\n"
                f"| line | reason |\n|---|---|\n{lines}"
            )
        return shown

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        target = allowed_table(self.target_table, ctx.settings.allowed_schemas)
        rejects, counts = Rejects(), Counts()

        def report(phase: str) -> None:
            ctx.progress.update(
                phase=phase,
                rows_read=counts.rows_read,
                rows_rejected=rejects.count,
                rows_staged=counts.rows_staged,
            )

        report("reading")
        table = sa.Table(
            target.name,
            sa.MetaData(),
            *(
                sa.Column(name, COLUMN_TYPES[kind], primary_key=name in self.key_columns)
                for name, kind in self.columns.items()
            ),
            schema=target.schema,
        )
        parsed = False
        try:
            # One transaction: the stage, the checks, the merge and the rejected rows. Whatever
            # fails, the target is as it was (the stage is made in it and gone with it).
            with ctx.begin() as connection:
                stage = Stage(connection, self.columns, schema=target.schema)
                # Closed whatever happens: a database export stops with the load.
                with contextlib.closing(self._source(ctx)) as batches:
                    typed = typed_batches(batches, self.columns, rejects, counts, lambda: report("reading"))
                    stage.load(typed)
                parsed = True
                refused = self._refusal(counts, rejects)
                if refused is not None:
                    raise refused
                report("merging")
                table.create(connection, checkfirst=True)
                if self.key_columns and not unique_key(sa.inspect(connection), target, self.key_columns):
                    raise JobInputError(
                        f"key_columns ({', '.join(self.key_columns)}) are not a primary key or unique "
                        f"constraint of {target}: rows cannot be matched by them"
                    )
                written = stage.merge(table, self.key_columns, self.replace)
                for line, first, key in duplicates(stage, self.key_columns, rejects.room()):
                    reason = f"duplicate of line {first} ({key}): the first is loaded"
                    rejects.add("duplicate", line, reason, key, counted=False)
                stage.drop()
                # In the load's transaction: after its commit, nothing may fail the attempt (its
                # retry would load the rows again). A retry replaces an earlier attempt's rows.
                keep_rejects(connection, self.rejects(), ctx.job_id, ctx.run_id, rejects)
                left_out = counts.rows_staged - written  # duplicates of an earlier row
                ctx.progress.update(phase="done", rows_written=written)
                ctx.log.info(
                    f"{self.target_table}: read {counts.rows_read}, rejected {rejects.count}, "
                    f"duplicates {left_out}, written {written}"
                )
        except JobInputError:
            if parsed and rejects.kept:  # refused, nothing loaded: the rejected rows say why
                with ctx.begin() as connection:
                    keep_rejects(connection, self.rejects(), ctx.job_id, ctx.run_id, rejects)
            raise
        return {
            "source": self.source_csv or f"{self.source_database}:{self.source_table}",
            "target_table": self.target_table,
            "rows_read": counts.rows_read,
            "rows_rejected": rejects.count,
            "rows_malformed": rejects.by_kind.get("malformed", 0),
            "rows_blank": counts.blank,
            "duplicates": left_out,
            "rows_written": written,
            "reject_table": str(self.rejects()) if rejects.kept else None,
            "rejected": rejects.summary() if rejects.kept else None,
        }

    def _refusal(self, counts: Counts, rejects: Rejects) -> JobInputError | None:
        """Why the load must not go ahead (the job fails at once, no retries), or None."""
        read, rejected = counts.rows_read, rejects.count
        if read and rejected / read > self.max_rejected_share:
            return JobInputError(
                f"{rejected} of {read} rows rejected ({rejected / read:.0%}), more than "
                f"max_rejected_share {self.max_rejected_share:.0%}: {self.target_table} left unchanged "
                f"(rejected rows in {self.rejects()})"
            )
        if self.replace and not counts.rows_staged:
            return JobInputError(
                f"replace=True with no rows to load ({read} read, {rejected} rejected) would "
                f"empty {self.target_table}: left unchanged"
            )
        return None
