"""Typed rows into a staging table (PostgreSQL's COPY, else chunked inserts), then one merge.

The stage is a temporary table on the load's own connection, inside its one transaction: the
merge into the target (de-duplicated, replaced or upserted) is an `INSERT ... SELECT`, and a
load that fails anywhere leaves the target as it was.
"""

import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import sqlalchemy as sa

from etl_pipelines.identifiers import TableName
from etl_pipelines.loading.columns import ARROW_TYPES, COLUMN_TYPES, decode, type_column
from etl_pipelines.loading.reader import BLOCK_BYTES, TextBatch, raw_cursor
from etl_pipelines.loading.rejects import Rejects

LINE = "etl_line"  # the stage's column for each row's line number (first of equal keys wins)
# Names the stage and its queries use: not for a loaded column.
RESERVED_COLUMNS = frozenset({LINE, "etl_dup_line", "etl_dup_first"})
# One COPY statement carries this many bytes of rows at most: each statement stays short (the
# job's statement timeout), while Python prepares the next rows as PostgreSQL parses these.
COPY_STATEMENT_BYTES = 64 << 20
COPY_READ_BYTES = 1 << 20
SQLITE_CHUNK = 5_000
MERGE_WORK_MEM = "64MB"


@dataclass
class Counts:
    rows_read: int = 0  # data rows, blank ones not counted
    rows_staged: int = 0
    blank: int = 0


def typed_batches(
    batches: Iterable[TextBatch],
    columns: dict[str, str],
    rejects: Rejects,
    counts: Counts,
    on_batch: Callable[[], None] = lambda: None,
) -> Iterator[pa.RecordBatch]:
    """Each text batch typed: its good rows (with their line numbers); the others to `rejects`."""
    schema = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in columns.items()] + [(LINE, pa.int64())])
    for batch in batches:
        for row in batch.malformed:
            rejects.add(
                "malformed",
                row.line,
                f"malformed: {row.fields} fields, the header has {row.expected}",
                row.text,
            )
            counts.rows_read += 1
        counts.blank += batch.blank
        rows = len(batch.lines)
        if rows:
            yield _type(batch, columns, schema, rejects, counts)
        on_batch()


def _type(
    batch: TextBatch, columns: dict[str, str], schema: pa.Schema, rejects: Rejects, counts: Counts
) -> pa.RecordBatch:
    rows = len(batch.lines)
    texts: dict[str, pa.Array] = {}
    values: list[pa.Array] = []
    # The first problem of each row: (kind, column) index into `problems`, -1 for none.
    problem = np.full(rows, -1, dtype=np.int32)
    problems: list[tuple[str, str, str]] = []  # (kind, column, what is wrong)

    def flag(mask: np.ndarray, column: str, what: str) -> None:
        fresh = mask & (problem < 0)
        if fresh.any():
            problem[fresh] = len(problems)
            problems.append((f"{column}: {what}", column, what))

    for name, kind in columns.items():
        text, undecodable = decode(batch.columns[name])
        texts[name] = text
        flag(undecodable, name, "not valid UTF-8")
        # PostgreSQL text cannot hold NUL.
        flag(
            np.asarray(pc.fill_null(pc.match_substring(text, "\x00"), False), dtype=bool),
            name,
            "NUL character",
        )
        typed = type_column(text, kind)
        flag(typed.bad, name, f"not a {kind}")
        values.append(typed.values)
    bad = problem >= 0
    counts.rows_read += rows
    if bad.any():
        _reject(batch, texts, bad, problem, problems, rejects)
    good = ~bad
    values.append(pa.array(batch.lines, pa.int64()))
    typed = pa.RecordBatch.from_arrays(values, schema=schema)
    if not good.all():
        typed = typed.filter(pa.array(good))
    counts.rows_staged += typed.num_rows
    return typed


def _reject(
    batch: TextBatch,
    texts: dict[str, pa.Array],
    bad: np.ndarray,
    problem: np.ndarray,
    problems: list[tuple[str, str, str]],
    rejects: Rejects,
) -> None:
    where = np.flatnonzero(bad)
    room = rejects.room()
    for index in where[:room]:  # the kept ones: their values and text
        kind, column, what = problems[problem[index]]
        value = texts[column][int(index)].as_py()
        fields = [texts[c][int(index)].as_py() for c in texts]
        text = ",".join("" if f is None else f for f in fields)
        shown = "(not UTF-8)" if value is None else repr(value[:100])
        rejects.add(kind, int(batch.lines[index]), f"{column}: {shown} is {what}", text)
    rest = where[room:] if room > 0 else where
    if len(rest):
        kinds, numbers = np.unique(problem[rest], return_counts=True)
        for kind_index, number in zip(kinds, numbers, strict=True):
            rejects.counted(problems[int(kind_index)][0], int(number))


def stage_name() -> str:
    """A name no other load uses: the stage is made inside the load's transaction."""
    return f"etl_stage_{uuid.uuid4().hex[:16]}"


class Stage:
    """A table of the load's columns (plus line numbers) made on `connection` inside its
    transaction, and gone with it: dropped before the commit, or rolled back with everything else.

    PostgreSQL: an UNLOGGED table in `schema` (the target's, which the jobs' role owns: no
    TEMPORARY privilege needed; never WAL-logged; invisible to other sessions, being uncommitted).
    SQLite: a temporary table.
    """

    def __init__(self, connection: sa.Connection, columns: dict[str, str], schema: str | None = None):
        self.connection = connection
        self.columns = columns
        self.postgresql = connection.dialect.name == "postgresql"
        self.table = sa.Table(
            stage_name(),
            sa.MetaData(),
            *(sa.Column(c, self._stage_type(kind)) for c, kind in columns.items()),
            sa.Column(LINE, sa.BigInteger),
            schema=schema if self.postgresql else None,
            prefixes=["UNLOGGED" if self.postgresql else "TEMPORARY"],
        )
        self.table.create(connection)
        self.quoted = connection.dialect.identifier_preparer.format_table(self.table)

    def drop(self) -> None:
        """Before the transaction commits: nothing of the stage outlives the load."""
        self.table.drop(self.connection)

    def _stage_type(self, kind: str) -> sa.types.TypeEngine:
        if kind == "datetime" and self.postgresql:
            return sa.DateTime(timezone=False)  # UTC, as COPY receives it (see _csv)
        return COLUMN_TYPES[kind]

    def load(self, batches: Iterator[pa.RecordBatch]) -> None:
        """Every batch into the stage."""
        if self.postgresql:
            self._copy(batches)
        else:
            self._insert(batches)

    def _copy(self, batches: Iterator[pa.RecordBatch]) -> None:
        preparer = self.connection.dialect.identifier_preparer
        names = ", ".join(preparer.quote(c) for c in [*self.columns, LINE])
        statement = f"COPY {self.quoted} ({names}) FROM STDIN WITH (FORMAT csv)"
        options = pcsv.WriteOptions(include_header=False, quoting_style="needed")
        chunks = (_csv(batch, options) for batch in batches)
        with raw_cursor(self.connection, statement) as cursor:
            while True:
                stream = _Chunks(chunks, COPY_STATEMENT_BYTES)
                try:
                    cursor.copy_expert(statement, stream, size=COPY_READ_BYTES)
                except Exception:
                    if stream.error is not None:
                        # psycopg2 reports an error of the rows' source as a cancelled COPY.
                        raise stream.error from None
                    raise
                if stream.exhausted:
                    break

    def _insert(self, batches: Iterator[pa.RecordBatch]) -> None:
        for batch in batches:
            rows = batch.to_pylist()
            for start in range(0, len(rows), SQLITE_CHUNK):
                self.connection.execute(self.table.insert(), rows[start : start + SQLITE_CHUNK])

    def merge(self, target: sa.Table, keys: list[str], replace: bool) -> int:
        """Into `target`: the first row of each key (or each distinct row without keys), as an
        upsert on the keys; after deleting every row first if `replace`. The rows written."""
        connection = self.connection
        preparer = connection.dialect.identifier_preparer
        into = preparer.format_table(target)
        if replace:
            connection.execute(target.delete())
        names = [preparer.quote(c) for c in self.columns]
        columns = ", ".join(names)
        values = ", ".join(
            f"{n} AT TIME ZONE 'UTC' AS {n}" if self.postgresql and kind == "datetime" else n
            for n, kind in zip(names, self.columns.values(), strict=True)
        )
        stage = self.quoted
        # Only validated column names and dialect-quoted table names are placed here.
        if not keys:
            select = f"SELECT DISTINCT {values} FROM {stage}"  # noqa: S608
            conflict = ""
        else:
            key_list = ", ".join(preparer.quote(k) for k in keys)
            line = preparer.quote(LINE)
            if self.postgresql:
                select = (
                    f"SELECT DISTINCT ON ({key_list}) {values} FROM {stage} "  # noqa: S608
                    f"ORDER BY {key_list}, {line}"
                )
            else:
                select = (
                    f"SELECT {values} FROM {stage} WHERE {line} IN "  # noqa: S608
                    f"(SELECT min({line}) FROM {stage} GROUP BY {key_list})"
                )
            updates = [
                f"{n} = excluded.{n}" for c, n in zip(self.columns, names, strict=True) if c not in keys
            ]
            action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
            conflict = f" ON CONFLICT ({key_list}) {action}"
        if (
            conflict
            and connection.execute(sa.select(sa.literal(1)).select_from(target).limit(1)).first() is None
        ):
            # Nothing to conflict with (a new or replaced table): a plain insert, twice as fast.
            conflict = ""
        if self.postgresql:
            # The de-duplicating sort in memory rather than in temporary files, for this transaction.
            connection.execute(sa.text(f"SET LOCAL work_mem = '{MERGE_WORK_MEM}'"))
        result = connection.execute(sa.text(f"INSERT INTO {into} ({columns}) {select}{conflict}"))
        if conflict.endswith("DO NOTHING"):
            # Every column is a key: rows already in the target were not written, nor were they
            # duplicates. The distinct rows, counted apart.
            distinct = f"SELECT count(*) FROM (SELECT DISTINCT {key_list} FROM {stage}) AS etl_distinct"  # noqa: S608
            return int(connection.execute(sa.text(distinct)).scalar_one())
        return int(result.rowcount)


def duplicates(stage: Stage, keys: list[str], limit: int) -> list[tuple[int, int, str]]:
    """The first `limit` rows the merge left out as duplicates: (line, line of the row kept, the
    key as text), in line order. Equal keys (or whole rows, without keys) as the merge saw them."""
    if limit <= 0:
        return []
    preparer = stage.connection.dialect.identifier_preparer
    names = [preparer.quote(c) for c in (keys or list(stage.columns))]
    line = preparer.quote(LINE)
    partition = ", ".join(names)
    # Only validated column names and the dialect-quoted stage are placed here.
    query = (
        f"SELECT etl_dup_line, etl_dup_first, {partition} FROM (SELECT {line} AS etl_dup_line, "  # noqa: S608
        f"min({line}) OVER (PARTITION BY {partition}) AS etl_dup_first, {partition} "
        f"FROM {stage.quoted}) AS etl_dup WHERE etl_dup_line <> etl_dup_first ORDER BY etl_dup_line LIMIT :n"
    )
    found = []
    for row in stage.connection.execute(sa.text(query), {"n": limit}):
        values = ", ".join(f"{c}={v!r}" for c, v in zip(keys or list(stage.columns), row[2:], strict=True))
        found.append((int(row[0]), int(row[1]), values))
    return found


def _csv(batch: pa.RecordBatch, options: pcsv.WriteOptions) -> bytes:
    # Zoned timestamps are written as UTC without the zone (20x faster in Arrow's writer); the
    # stage keeps them as `timestamp` and the merge reads them AT TIME ZONE 'UTC'.
    if any(pa.types.is_timestamp(f.type) and f.type.tz for f in batch.schema):
        batch = pa.RecordBatch.from_arrays(
            [
                c.cast(pa.timestamp(f.type.unit)) if pa.types.is_timestamp(f.type) and f.type.tz else c
                for c, f in zip(batch.columns, batch.schema, strict=True)
            ],
            names=batch.schema.names,
        )
    sink = io.BytesIO()
    pcsv.write_csv(batch, sink, options)
    return sink.getvalue()


class _Chunks(io.RawIOBase):
    """Chunks of bytes as a file that psycopg2's copy_expert reads, ending after `limit` bytes
    (at a chunk's end) or when the chunks run out (`exhausted`)."""

    def __init__(self, chunks: Iterator[bytes], limit: int):
        self._chunks = chunks
        self._limit = limit
        self._sent = 0
        self._buffer = b""
        self.exhausted = False
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and self._sent < self._limit and not self.exhausted:
            try:
                chunk = next(self._chunks, None)
            except BaseException as exc:
                self.error = exc
                raise
            if chunk is None:
                self.exhausted = True
            else:
                self._buffer = chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        self._sent += len(out)
        return out


def unique_key(inspector: sa.Inspector, table: TableName, columns: list[str]) -> bool:
    """Does a primary key, unique constraint or (whole, non-partial) unique index hold exactly
    `columns`? The table must exist (sa.exc.NoSuchTableError otherwise)."""
    wanted = sorted(columns)
    primary = inspector.get_pk_constraint(table.name, schema=table.schema)["constrained_columns"]
    unique = [u["column_names"] for u in inspector.get_unique_constraints(table.name, schema=table.schema)]
    indexes = [
        i["column_names"]
        for i in inspector.get_indexes(table.name, schema=table.schema)
        if i["unique"] and not i.get("dialect_options", {}).get("postgresql_where")
    ]
    found: list[list[Any]] = [primary, *unique, *indexes]
    return any(sorted(str(c) for c in names) == wanted for names in found)


def csv_rows(stream: BinaryIO, columns: list[str], rows: int) -> Iterator[pa.RecordBatch]:
    """A CSV stream with a header (PostgreSQL's COPY TO output) in batches of `rows` rows, every
    value kept as its text (NULL apart from the empty string), for copy_upsert."""
    reader = pcsv.open_csv(
        stream,
        read_options=pcsv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types={c: pa.string() for c in columns},
            # COPY writes NULL as an unquoted empty value and nothing else ('NULL', 'N/A', 'nan'
            # are values), the empty string as "".
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            pending, held = rest.combine_chunks().to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def copy_upsert(
    connection: sa.Connection, target: sa.Table, key: str, rows: pa.RecordBatch, *, fresh: bool = False
) -> tuple[int, int]:
    """`rows` (text, as COPY wrote them) upserted into `target` on `key` through a stage filled by
    COPY: (inserted, updated). `fresh`: the target held nothing when the sync began and the rows'
    keys are distinct, so they go straight in by COPY. PostgreSQL."""
    preparer = connection.dialect.identifier_preparer
    names = [preparer.quote(c) for c in rows.schema.names]
    columns = ", ".join(names)
    into = preparer.format_table(target)
    rows_csv = _csv(rows, pcsv.WriteOptions(include_header=False, quoting_style="needed"))
    connection.execute(sa.text("SET LOCAL datestyle = 'ISO, YMD'"))  # as the source wrote them
    if fresh:
        statement = f"COPY {into} ({columns}) FROM STDIN WITH (FORMAT csv)"
        with raw_cursor(connection, statement) as cursor:
            cursor.copy_expert(statement, io.BytesIO(rows_csv))
        return rows.num_rows, 0
    # The stage beside the target (see Stage), made and dropped in this batch's transaction. Only
    # dialect-quoted names of the source's columns and the checked target are placed here.
    stage = preparer.format_table(sa.table(stage_name(), schema=target.schema))
    connection.execute(sa.text(f"CREATE UNLOGGED TABLE {stage} AS SELECT {columns} FROM {into} LIMIT 0"))  # noqa: S608
    statement = f"COPY {stage} ({columns}) FROM STDIN WITH (FORMAT csv)"
    with raw_cursor(connection, statement) as cursor:
        cursor.copy_expert(statement, io.BytesIO(rows_csv))
    quoted_key = preparer.quote(key)
    updates = ", ".join(
        f"{n} = excluded.{n}" for c, n in zip(rows.schema.names, names, strict=True) if c != key
    )
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    # xmax is 0 on a row this statement inserted, the updating transaction's id on one it updated.
    inserted, total = connection.execute(
        sa.text(
            f"WITH written AS (INSERT INTO {into} ({columns}) SELECT {columns} FROM {stage} "  # noqa: S608
            f"ON CONFLICT ({quoted_key}) {action} RETURNING (xmax = 0) AS inserted) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FROM written"
        )
    ).one()
    connection.execute(sa.text(f"DROP TABLE {stage}"))
    return int(inserted), int(total) - int(inserted)
