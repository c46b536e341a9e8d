"""Sources of a load as a stream of text batches, each row with its line number.

Everything is read as CSV bytes in bounded blocks (Arrow's C++ reader), whatever the source: a
file, or a database table exported by the source itself (PostgreSQL's `COPY ... TO STDOUT`, or a
server-side cursor written as CSV) through a pipe. Memory stays a few blocks whatever the size.

Line numbers are the file's record numbers (the header is line 1; a quoted value spanning lines
counts as one): Arrow reports the number of each malformed row (another number of fields than the
header), and the good rows fill the numbers in between, in order.
"""

import bisect
import contextlib
import csv
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import sqlalchemy as sa

from etl_pipelines.errors import JobInputError

# Rows a database source without COPY sends per fetch.
FETCH_ROWS = 10_000
BLOCK_BYTES = 512 << 10  # rows per batch: 512 KiB of the file (~10,000 rows of 50 bytes)


@dataclass(frozen=True)
class Malformed:
    """A row with another number of fields than the header."""

    line: int
    text: str
    fields: int
    expected: int


@dataclass(frozen=True)
class TextBatch:
    """Rows as read: one binary array per loaded column, and each row's line number."""

    columns: dict[str, pa.Array]
    lines: np.ndarray
    malformed: list[Malformed]
    blank: int = 0  # rows without any value, left out


def read_header(stream: BinaryIO, encoding: str, name: str) -> list[str]:
    """The header row's column names (the stream is left where it was)."""
    start = stream.tell()
    raw = b""
    try:
        while True:  # whole lines, until no quoted value is left open
            line = stream.readline()
            raw += line
            if not line or raw.count(b'"') % 2 == 0:
                break
    finally:
        stream.seek(start)
    utf8 = encoding.replace("_", "-").lower() in ("utf-8", "utf8")
    try:
        text = raw.decode("utf-8-sig" if utf8 else encoding)
        header = next(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise JobInputError(f"cannot parse {name}: its header is not {encoding} CSV ({exc})") from None
    except StopIteration:
        raise JobInputError(f"cannot parse {name}: the file is empty") from None
    return header


def csv_batches(
    stream: BinaryIO,
    columns: list[str],
    *,
    name: str,
    header: list[str],
    encoding: str = "utf-8",
    block_bytes: int = BLOCK_BYTES,
    skip_blank: bool = True,
) -> Iterator[TextBatch]:
    """The loaded `columns` of a CSV stream (with `header`), in batches of one block each.

    With `skip_blank`, rows without any value in any column (an empty line, or only separators)
    are left out and counted in `TextBatch.blank` (a database's export has no blank lines: an
    all-NULL row is a row).
    """
    missing = sorted(set(columns) - set(header))
    if missing:
        shown = ", ".join(repr(h) for h in header)
        raise JobInputError(
            f"cannot import {name}: no column(s) {', '.join(missing)} in its header ({shown})"
        )
    twice = sorted(c for c in set(columns) if header.count(c) > 1)
    if twice:
        raise JobInputError(f"cannot import {name}: its header names {', '.join(twice)} more than once")
    fresh: list[Malformed] = []  # malformed rows reported, not yet passed on
    skipped: list[int] = []  # their line numbers not yet passed by the good rows (in order)
    expected = len(header)

    def on_invalid(row: pcsv.InvalidRow) -> str:
        fresh.append(Malformed(int(row.number), row.text[:1000], row.actual_columns, expected))
        skipped.append(int(row.number))
        return "skip"

    transcode = encoding.replace("_", "-").lower() not in ("utf-8", "utf8")
    try:
        reader = pcsv.open_csv(
            stream,
            # Single-threaded: Arrow gives no line numbers otherwise, and the database doing the
            # load wants the other core.
            read_options=pcsv.ReadOptions(
                use_threads=False, block_size=block_bytes, encoding=encoding if transcode else "utf8"
            ),
            # Blank lines come as rows of empty values (so numbers stay line numbers); left out here.
            parse_options=pcsv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            # Bytes, not text: a cell that is not UTF-8 rejects its row, not the file. Every column
            # is read (as bytes): a row is blank only if all of them are empty.
            convert_options=pcsv.ConvertOptions(
                column_types={column: pa.binary() for column in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError, UnicodeDecodeError) as exc:
        raise JobInputError(f"cannot parse {name}: {exc}") from None
    cursor = 2  # the first data line
    batches = iter(reader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            if "straddles" in str(exc):
                raise JobInputError(
                    f"cannot parse {name}: a record after line {cursor - 1} is longer than the reader's "
                    f"{block_bytes >> 10} KiB block (a huge quoted value, or an unclosed quote)"
                ) from None
            raise JobInputError(f"cannot parse {name}: {exc}") from None
        count = batch.num_rows
        if count:
            # The good rows fill the line numbers the malformed ones left, in order.
            reach = bisect.bisect_left(skipped, cursor + count + len(skipped))
            window = np.array(skipped[:reach], np.int64)
            candidates = np.arange(cursor, cursor + count + len(window), dtype=np.int64)
            lines = candidates[~np.isin(candidates, window)][:count]
            cursor = int(lines[-1]) + 1
            del skipped[: bisect.bisect_left(skipped, cursor)]
        else:
            lines = np.array([], np.int64)
        blank = 0
        if skip_blank and count:
            empty = np.ones(count, dtype=bool)
            for column in batch.columns:
                empty &= np.asarray(pc.equal(pc.binary_length(column), 0).to_numpy(zero_copy_only=False))
            blank = int(empty.sum())
            if blank:
                batch, lines = batch.filter(pa.array(~empty)), lines[~empty]
        passed, fresh[:] = list(fresh), []
        index = {n: i for i, n in enumerate(batch.schema.names)}
        yield TextBatch({c: batch.column(index[c]) for c in columns}, lines, passed, blank)
    if fresh:
        yield TextBatch(
            {c: pa.array([], pa.binary()) for c in columns}, np.array([], np.int64), list(fresh), 0
        )


class Pipe:
    """A byte stream fed by `produce(write)` in a thread: a database export read as a file.

    The consumer reads it like a file. When the stream ends, `raise_error()` raises the producer's
    error, if it had one. A consumer that leaves early (an error, or a generator closed) cancels
    the producer's statement (`cancel`, e.g. the source connection's cancel()) and closes the
    pipe, so the source stops sending and nothing is left running after the job.
    """

    def __init__(
        self, produce: Callable[[BinaryIO], None], name: str, cancel: Callable[[], None] | None = None
    ):
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb", buffering=1 << 20)
        self._writer = os.fdopen(write_fd, "wb", buffering=1 << 20)
        self.error: BaseException | None = None
        self._cancel = cancel
        self.cancelled = False
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)

    def _run(self, produce: Callable[[BinaryIO], None]) -> None:
        try:
            produce(self._writer)
        except BaseException as exc:  # given to the consumer by raise_error()
            self.error = exc
        finally:
            with contextlib.suppress(OSError):  # the reader is gone
                self._writer.close()

    def __enter__(self) -> "Pipe":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive() and self._cancel is not None:
            self.cancelled = True
            with contextlib.suppress(Exception):  # it may have ended meanwhile
                self._cancel()
        self.reader.close()  # a producer still writing gets EPIPE and ends
        self._thread.join()

    def raise_error(self, cause: BaseException | None = None) -> None:
        """The producer's error, if it had one (once the stream ended, or `cause` stopped it)."""
        self._thread.join(timeout=None if cause is None else 30)
        if self.error is not None:
            raise self.error from cause


@contextlib.contextmanager
def export_csv(
    connection: sa.Connection, query: str, params: Any, columns: list[str], name: str
) -> Iterator[Pipe]:
    """The rows of `query` (with `params`) on `connection` as a CSV stream with a header row:
    PostgreSQL's own `COPY (query) TO STDOUT`, elsewhere a server-side cursor written as CSV. Read
    `pipe.reader`, then call `pipe.raise_error()`; leaving early cancels the export."""
    postgresql = connection.dialect.name == "postgresql"

    def produce(out: BinaryIO) -> None:
        if postgresql:
            with raw_cursor(connection, "COPY ... TO STDOUT") as cursor:
                sql = cursor.mogrify(query, params).decode() if params else query
                cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)", out)
            return
        text = io.TextIOWrapper(
            out, encoding="utf-8", errors="surrogateescape", newline="", write_through=True
        )
        writer = csv.writer(text)
        writer.writerow(columns)
        result = connection.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(
            sa.text(query), params or {}
        )
        for rows in result.partitions(FETCH_ROWS):
            writer.writerows(rows)
        text.flush()
        text.detach()

    def cancel() -> None:
        if postgresql:
            connection.connection.dbapi_connection.cancel()  # type: ignore[union-attr]

    pipe = Pipe(produce, name, cancel)
    try:
        with pipe:
            yield pipe
    finally:
        if pipe.cancelled:
            # The cancelled statement aborted the connection's transaction, which SQLAlchemy may
            # not know of (COPY went through the DBAPI cursor): roll it back for the next user.
            with contextlib.suppress(Exception):
                if connection.in_transaction():
                    connection.rollback()
                else:
                    connection.connection.dbapi_connection.rollback()  # type: ignore[union-attr]


@contextlib.contextmanager
def raw_cursor(connection: sa.Connection, what: str) -> Iterator[Any]:
    """A DBAPI cursor of a SQLAlchemy `connection`, for COPY (which SQLAlchemy has no API for). Its
    errors are raised as SQLAlchemy's DBAPIError, like any statement's: the attempt tells a
    permanent error, a timeout and a lost fence apart by them."""
    dbapi_error = connection.dialect.loaded_dbapi.Error
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(what, None, exc, dbapi_error) from exc
    finally:
        with contextlib.suppress(Exception):
            cursor.close()
