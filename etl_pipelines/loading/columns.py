"""Typing a batch of text columns, vectorised (Arrow compute kernels): values, or why not.

A load declares each column's type by name (int, float, str, bool, date, datetime). Every value
is read as text, trimmed; an empty value is NULL. A value that does not parse as its column's type
rejects its row, with the reason. What parses here is what the target database accepts: ints are
64-bit, dates and times are real calendar values (no 30 February, no hour 24), written back in
one canonical form for the load.

- int: optional sign and digits within 64 bits, maybe with a zero fraction (`12.0`); or scientific
  notation with a whole value below 10**15 (`1e3`).
- float: a decimal or scientific number (`-1.5`, `.5`, `2e-3`), finite; no `nan` or `inf` text.
- bool: true/t/yes/y/1 or false/f/no/n/0, in any case.
- date: ISO 8601 `YYYY-MM-DD`, or a datetime (its UTC date).
- datetime: ISO 8601 `YYYY-MM-DD[(T| )HH:MM[:SS[.ffffff]]][Z|±HH[[:]MM]]`; without an offset, UTC;
  from year 1 once in UTC.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

# Column types a load may declare, and the SQL type a created target table gets for each.
COLUMN_TYPES: dict[str, sa.types.TypeEngine] = {
    "int": sa.BigInteger(),
    "float": sa.Float(),
    "str": sa.Text(),
    "bool": sa.Boolean(),
    "date": sa.Date(),
    "datetime": sa.DateTime(timezone=True),
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us", tz="UTC"),
}
TRUE = ["true", "t", "yes", "y", "1"]
FALSE = ["false", "f", "no", "n", "0"]

_SMALL_INT = r"^[+-]?[0-9]{1,18}$"  # fits int64 whatever the digits
_BIG_INT = r"^[+-]?[0-9]{19,}$"
_SCIENTIFIC = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+$"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_YEAR_ONE_US = -62135596800 * 1_000_000  # 0001-01-01T00:00:00Z in microseconds since 1970
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_STAMP = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?$"
)
# A time's zone: Z or an offset, after a time (a date's -DD is not one).
_OFFSET_AT_END = r"[T ][0-9:.]+(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


@dataclass(frozen=True)
class Typed:
    """One column typed: `values` (NULL where empty or bad) and the mask of bad values."""

    values: pa.Array
    bad: np.ndarray  # bool, one per row


def decode(raw: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Binary cells as UTF-8 text; (text, mask of cells that are not UTF-8, NULL in text)."""
    try:
        return pc.cast(raw, pa.string()), np.zeros(len(raw), dtype=bool)
    except pa.ArrowInvalid:
        pass
    # Rare: find the bad cells one by one (only in batches that hold one).
    cells = raw.to_pylist()
    bad = np.zeros(len(cells), dtype=bool)
    text: list[str | None] = []
    for i, cell in enumerate(cells):
        try:
            text.append(None if cell is None else cell.decode("utf-8"))
        except UnicodeDecodeError:
            bad[i] = True
            text.append(None)
    return pa.array(text, pa.string()), bad


def type_column(text: pa.Array, kind: str) -> Typed:
    """`text` (strings) typed as `kind`: values (NULL for empty and bad) and which were bad."""
    trimmed = pc.utf8_trim_whitespace(text)
    present = pc.fill_null(pc.greater(pc.utf8_length(trimmed), 0), False)
    trimmed = pc.if_else(present, trimmed, pa.scalar(None, pa.string()))
    if kind == "str":
        return Typed(trimmed, np.zeros(len(text), dtype=bool))
    if kind == "int":
        values = _ints(trimmed)
    elif kind == "float":
        values = _numbers(trimmed)
        values = pc.if_else(pc.is_finite(values), values, None)  # 1e400, inf: not a stored number
    elif kind == "bool":
        lowered = pc.utf8_lower(trimmed)
        values = pc.if_else(
            pc.is_in(lowered, pa.array(TRUE)),
            True,
            pc.if_else(pc.is_in(lowered, pa.array(FALSE)), False, pa.scalar(None, pa.bool_())),
        )
    elif kind in ("date", "datetime"):
        values = _stamps(trimmed)
        if kind == "date":
            values = pc.cast(values, pa.date32())
    else:
        raise ValueError(f"unknown column type {kind!r}")
    bad = _mask(present) & ~_mask(pc.is_valid(values))
    return Typed(values, bad)


def _mask(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _matches(text: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(text, pattern), False)


def _cast(text: pa.Array, to: pa.DataType) -> pa.Array | None:
    """Every value cast at once (the common case: a clean column), or None if one does not parse."""
    try:
        return pc.cast(text, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _unsigned(text: pa.Array) -> pa.Array:
    """Arrow's number parsers take `-5`, not `+5`."""
    return pc.replace_substring_regex(text, r"^\+", "")


def _numbers(text: pa.Array) -> pa.Array:
    """float64 where `text` is a decimal or scientific number (the _NUMBER shape), NULL elsewhere.
    The shape decides, never what a parser happens to accept (`0x10`, `1_000`, `nan`)."""
    numbers = _matches(text, _NUMBER)
    return pc.cast(_unsigned(pc.if_else(numbers, text, None)), pa.float64())


def _ints(text: pa.Array) -> pa.Array:
    """int64 where `text` is an integer within 64 bits, written as digits (`-12`, `12.0`: a zero
    fraction) or in scientific notation below 10**15 (`1e3`: exact in a float); NULL elsewhere."""
    digits = pc.replace_substring_regex(text, r"\.0*$", "")  # 12.0 -> 12, exactly
    small = _matches(digits, _SMALL_INT)
    values = pc.cast(_unsigned(pc.if_else(small, digits, None)), pa.int64())
    big = _mask(_matches(digits, _BIG_INT))
    if big.any():  # 19 digits or more: exact, value by value (rare)
        cells = digits.to_pylist()
        exact: list[int | None] = [None] * len(cells)
        for i in np.flatnonzero(big):
            number = int(cells[i])
            exact[i] = number if _INT64_MIN <= number <= _INT64_MAX else None
        values = pc.coalesce(values, pa.array(exact, pa.int64()))
    scientific = _matches(text, _SCIENTIFIC)
    if pc.any(scientific).as_py():
        floats = _numbers(pc.if_else(scientific, text, None))
        whole = pc.and_(pc.equal(floats, pc.floor(floats)), pc.less(pc.abs(floats), 1e15))
        values = pc.coalesce(values, pc.cast(pc.if_else(whole, floats, None), pa.int64()))
    return values


def _stamps(text: pa.Array) -> pa.Array:
    """ISO 8601 dates and datetimes (the _STAMP shape) as UTC timestamps from year 1; NULL where
    not a real one. Arrow parses the values, but the shape and the calendar are checked here, so
    a value is accepted or not whatever the other values of its block are."""
    utc = pa.timestamp("us", tz="UTC")
    shaped = _mask(_matches(text, _STAMP))
    if not shaped.any():
        return pa.nulls(len(text), utc)
    zoned = _mask(_matches(text, _OFFSET_AT_END))
    values = None
    if shaped.sum() == pc.count(text).as_py():  # every value has the shape: Arrow checks the rest
        if zoned[shaped].all():
            values = _cast(text, utc)
        elif not zoned.any():
            naive = _cast(text, pa.timestamp("us"))
            values = None if naive is None else pc.cast(naive, utc)
    if values is None:
        values = _checked_stamps(text, shaped, zoned)
    # Year 1 onwards once in UTC (0001-01-01T00:30+01:00 is year 0, which PostgreSQL refuses).
    return pc.if_else(pc.greater_equal(pc.cast(values, pa.int64()), _YEAR_ONE_US), values, None)


def _checked_stamps(text: pa.Array, shaped: np.ndarray, zoned: np.ndarray) -> pa.Array:
    """The shaped values that are real dates and times (and zones), parsed; NULL elsewhere."""
    utc = pa.timestamp("us", tz="UTC")
    # The shape puts each field at a fixed place: read the digits from Arrow's buffers directly.
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset : text.offset + len(text) + 1]
    data = np.frombuffer(text.buffers()[2], dtype=np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    ends = starts + lengths

    def char(at: np.ndarray | int, base: np.ndarray = starts) -> np.ndarray:
        return data[np.clip(base + at, 0, len(data) - 1)]

    def part(start: int, stop: int, present: np.ndarray, base: np.ndarray = starts) -> np.ndarray:
        value = np.zeros(len(starts), dtype=np.int64)
        for at in range(start, stop):
            value = value * 10 + (char(at, base).astype(np.int64) - 48)
        return np.where(present, value, 0)

    year, month, day = part(0, 4, shaped), part(5, 7, shaped), part(8, 10, shaped)
    timed = shaped & (lengths >= 16)
    hour, minute = part(11, 13, timed), part(14, 16, timed)
    second = part(17, 19, timed & (lengths >= 19) & (char(16) == ord(":")))
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_ok = (month >= 1) & (month <= 12)
    days = np.where(month_ok, _DAYS[np.clip(month, 1, 12) - 1], 0) + ((month == 2) & leap)
    real = shaped & month_ok & (day >= 1) & (day <= days) & (hour < 24) & (minute < 60) & (second < 60)
    # A zone: Z, or ±HH, ±HHMM, ±HH:MM at the end.
    zoned = zoned & shaped

    def sign(back: int) -> np.ndarray:
        return zoned & np.isin(char(-back, ends), (ord("+"), ord("-")))

    hh, hhmm = sign(3), sign(5)
    hh_mm = sign(6) & (char(-3, ends) == ord(":"))
    zone_hours = part(-2, 0, hh, ends) + part(-4, -2, hhmm, ends) + part(-5, -3, hh_mm, ends)
    zone_minutes = part(-2, 0, hhmm, ends) + part(-2, 0, hh_mm, ends)
    real &= (zone_hours < 24) & (zone_minutes < 60)
    try:
        with_zone = pc.cast(pc.if_else(pa.array(real & zoned), text, None), utc)
        without = pc.cast(pc.cast(pc.if_else(pa.array(real & ~zoned), text, None), pa.timestamp("us")), utc)
        return pc.coalesce(with_zone, without)
    except pa.ArrowInvalid:
        pass
    # Something the checks above let through and Arrow refuses: value by value (never seen).
    cells: list[Any] = []
    for i, cell in enumerate(text.to_pylist()):
        if not real[i]:
            cells.append(None)
            continue
        try:
            kind = utc if zoned[i] else pa.timestamp("us")
            cells.append(pc.cast(pc.cast(pa.array([cell]), kind), utc)[0].as_py())
        except pa.ArrowInvalid:
            cells.append(None)
    return pa.array(cells, utc)
