"""Sources of a load as a stream of text batches, each row with its line number.

Everything is read as CSV bytes in bounded blocks (Arrow's C++ reader), whatever the source: a
file, or a database table exported by the source itself (PostgreSQL's `COPY ... TO STDOUT`, or a
server-side cursor written as CSV) through a pipe. Memory stays a few blocks whatever the size.

Line numbers are the file's record numbers (the header is line 1; a quoted value spanning lines
counts as one): Arrow reports the number of each malformed row (another number of fields than the
header), and the good rows fill the numbers in between, in order.
"""

import contextlib
import csv
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from etl_pipelines.errors import JobInputError

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
    return [column.strip() for column in header]


def csv_batches(
    stream: BinaryIO,
    columns: list[str],
    *,
    name: str,
    header: list[str],
    encoding: str = "utf-8",
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[TextBatch]:
    """The loaded `columns` of a CSV stream (with `header`), in batches of one block each."""
    missing = sorted(set(columns) - set(header))
    if missing:
        raise JobInputError(
            f"cannot import {name}: no column(s) {', '.join(missing)} in its header ({', '.join(header)})"
        )
    pending: list[Malformed] = []  # malformed rows reported, not yet passed on
    expected = len(header)

    def on_invalid(row: pcsv.InvalidRow) -> str:
        pending.append(Malformed(int(row.number), row.text[:1000], row.actual_columns, expected))
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
            # Blank lines come as rows of empty values (so numbers stay line numbers); skipped later.
            parse_options=pcsv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            # Bytes, not text: a cell that is not UTF-8 rejects its row, not the file.
            convert_options=pcsv.ConvertOptions(
                include_columns=columns,
                column_types={column: pa.binary() for column in columns},
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
            raise JobInputError(f"cannot parse {name}: {exc}") from None
        count = batch.num_rows
        skipped = sorted(m.line for m in pending)
        candidates = np.arange(cursor, cursor + count + len(skipped), dtype=np.int64)
        lines = candidates[~np.isin(candidates, skipped)][:count]
        if count:
            cursor = int(lines[-1]) + 1
        passed = [m for m in pending if m.line < cursor]
        pending[:] = [m for m in pending if m.line >= cursor]
        yield TextBatch({c: batch.column(c) for c in columns}, lines, passed)
    if pending:
        yield TextBatch({c: pa.array([], pa.binary()) for c in columns}, np.array([], np.int64), pending)


class Pipe:
    """A byte stream fed by `produce(write)` in a thread: a database export read as a file.

    The consumer reads it like a file; an error in the producer is raised to the consumer at the
    end of the stream, and a consumer that stops early closes the pipe, which stops the producer.
    """

    def __init__(self, produce: Callable[[BinaryIO], None], name: str):
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb", buffering=1 << 20)
        self._writer = os.fdopen(write_fd, "wb", buffering=1 << 20)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)

    def _run(self, produce: Callable[[BinaryIO], None]) -> None:
        try:
            produce(self._writer)
        except BaseException as exc:  # given to the consumer by close()
            self.error = exc
        finally:
            with contextlib.suppress(OSError):  # the reader is gone
                self._writer.close()

    def __enter__(self) -> "Pipe":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reader.close()  # a producer still writing gets EPIPE and ends
        self._thread.join()

    def raise_error(self) -> None:
        """After the stream ended: the producer's error, if it had one."""
        self._thread.join()
        if self.error is not None:
            raise self.error
