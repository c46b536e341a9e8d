from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext, JobInputError
from etl_pipelines.identifiers import allowed_table, check_identifier, check_source_table
from etl_pipelines.settings import Settings, SettingsError

# Column types a load may declare, and the SQL type a created target table gets for each.
COLUMN_TYPES: dict[str, sa.types.TypeEngine] = {
    "int": sa.BigInteger(),
    "float": sa.Float(),
    "str": sa.Text(),
    "bool": sa.Boolean(),
    "date": sa.Date(),
    "datetime": sa.DateTime(timezone=True),
}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
INSERT_CHUNK = 5_000
# A few bad lines in a large export are loaded around and counted; more than one row in ten is
# a broken file (wrong delimiter, shifted columns, another export's layout), not dirty data.
DEFAULT_MAX_REJECTED_SHARE = 0.1


def typed_column(raw: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """(values, bad): `raw` (strings, "" for empty) converted to `kind`; `bad` marks unparseable cells."""
    text = raw.astype("string").str.strip()
    empty = text.isna() | (text == "")
    if kind == "str":
        return text.where(~empty, None).astype(object), pd.Series(False, index=raw.index)
    if kind in ("int", "float"):
        numbers = pd.to_numeric(text.where(~empty), errors="coerce")
        bad = numbers.isna() & ~empty
        if kind == "int":
            bad |= numbers.notna() & (numbers % 1 != 0)
            values = numbers.where(~bad).astype("Int64").astype(object)
        else:
            values = numbers.astype(object)
        return values.where(~empty & ~bad, None), bad
    if kind == "bool":
        lowered = text.str.lower()
        values = lowered.map(lambda v: True if v in _TRUE else False if v in _FALSE else None)
        return values.astype(object), values.isna() & ~empty
    if kind in ("date", "datetime"):
        stamps = pd.to_datetime(text.where(~empty), errors="coerce", utc=True, format="ISO8601")
        bad = stamps.isna() & ~empty
        values = stamps.dt.date if kind == "date" else stamps
        return values.astype(object).where(~empty & ~bad, None), bad
    raise JobInputError(f"unknown column type {kind!r}; use one of {', '.join(COLUMN_TYPES)}")


class DataImport(BaseJob):
    """Import rows from a CSV file or another database into a table: typed, de-duplicated, one transaction."""

    queue: ClassVar[str] = "medium"
    destructive: ClassVar[bool] = True
    # Many statements, each under the statement timeout; the attempt as a whole may take hours.
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
        description="Rows with equal keys are duplicates (the first is kept); empty: whole rows.",
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
            if kind not in COLUMN_TYPES:
                raise JobInputError(f"column {name}: unknown type {kind!r}; use {', '.join(COLUMN_TYPES)}")
        for name in [*self.key_columns, *filter(None, [self.aggregate_by, self.aggregate_value])]:
            if name not in self.columns:
                raise JobInputError(f"{name!r} is not among the loaded columns")
        if self.source_csv is not None:
            self.csv_path(settings)

    def csv_path(self, settings: Settings) -> Path:
        """The CSV file, which must lie inside ETL_IMPORT_DIR."""
        if self.source_csv is None:
            raise JobInputError("this import reads a database, not a CSV file")
        base = settings.import_dir.resolve()
        path = (base / self.source_csv).resolve()
        if not path.is_relative_to(base):
            raise JobInputError(f"source_csv {self.source_csv!r} is outside ETL_IMPORT_DIR ({base})")
        return path

    def extract(self, ctx: JobContext) -> tuple[pd.DataFrame, int, list[list[str]]]:
        """(frame of strings, rows read, malformed rows as read)."""
        if self.source_csv is not None:
            return self._read_csv(self.csv_path(ctx.settings))
        try:
            url = ctx.settings.named_database_url(self.source_database or "")
        except SettingsError as exc:
            raise JobInputError(str(exc)) from None
        with ctx.connect(url) as connection:
            table = check_source_table(self.source_table or "").quoted(connection.dialect)
            frame = pd.read_sql_query(sa.text(f"SELECT * FROM {table}"), connection)  # noqa: S608 (quoted)
        missing = sorted(set(self.columns) - set(frame.columns))
        if missing:
            raise JobInputError(f"{self.source_table} has no column(s) {', '.join(missing)}")
        frame = frame[list(self.columns)].astype("string").fillna("")
        return frame, len(frame), []

    def _read_csv(self, path: Path) -> tuple[pd.DataFrame, int, list[list[str]]]:
        if not path.is_file():
            raise JobInputError(f"no such file: {path}")
        malformed: list[list[str]] = []

        def bad_line(fields: list[str]) -> None:
            malformed.append(fields)  # a row with more fields than the header; dropped

        try:
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                engine="python",
                on_bad_lines=bad_line,
                skip_blank_lines=True,
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            raise JobInputError(f"cannot parse {path.name}: {exc}") from None
        missing = sorted(set(self.columns) - set(frame.columns))
        if missing:
            raise JobInputError(
                f"cannot import {path.name}: no column(s) {', '.join(missing)} in its header "
                f"({', '.join(map(str, frame.columns))})"
            )
        return frame[list(self.columns)], len(frame) + len(malformed), malformed

    def result_metadata(self, result: dict[str, Any]) -> dict[str, dg.MetadataValue]:
        return {k: dg.MetadataValue.int(v) for k, v in result.items() if k.startswith(("rows_", "dup"))}

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        raw, rows_read, malformed = self.extract(ctx)
        typed = pd.DataFrame(index=raw.index)
        bad = pd.Series(False, index=raw.index)
        for name, kind in self.columns.items():
            typed[name], column_bad = typed_column(raw[name], kind)
            bad |= column_bad
        rejected = int(bad.sum()) + len(malformed)
        typed = typed[~bad]
        duplicated = typed.duplicated(subset=self.key_columns or None, keep="first")
        typed = typed[~duplicated]
        rows = typed.to_dict(orient="records")
        # Refused before the target is touched (or created): the job fails at once, no retries.
        if rows_read and rejected / rows_read > self.max_rejected_share:
            raise JobInputError(
                f"{rejected} of {rows_read} rows rejected ({rejected / rows_read:.0%}), more than "
                f"max_rejected_share {self.max_rejected_share:.0%}: {self.target_table} left unchanged"
            )
        if self.replace and not rows:
            raise JobInputError(
                f"replace=True with no rows to load ({rows_read} read, {rejected} rejected) would "
                f"empty {self.target_table}: left unchanged"
            )

        target = allowed_table(self.target_table, ctx.settings.allowed_schemas)
        table = sa.Table(
            target.name,
            sa.MetaData(),
            *(
                sa.Column(name, COLUMN_TYPES[kind], primary_key=name in self.key_columns)
                for name, kind in self.columns.items()
            ),
            schema=target.schema,
        )
        with ctx.begin() as connection:
            table.create(connection, checkfirst=True)
            if self.replace:
                connection.execute(table.delete())
            for start in range(0, len(rows), INSERT_CHUNK):
                connection.execute(table.insert(), rows[start : start + INSERT_CHUNK])
        ctx.log.info(
            f"{self.target_table}: read {rows_read}, rejected {rejected}, "
            f"duplicates {int(duplicated.sum())}, written {len(rows)}"
        )
        return {
            "source": self.source_csv or f"{self.source_database}:{self.source_table}",
            "target_table": self.target_table,
            "rows_read": rows_read,
            "rows_rejected": rejected,
            "rows_malformed": len(malformed),
            "duplicates": int(duplicated.sum()),
            "rows_written": len(rows),
        }
