"""The streaming load's rules, without services: typing, line numbers, rejects, the stage on SQLite."""

import io
from datetime import UTC, date, datetime

import pyarrow as pa
import pytest
import sqlalchemy as sa

from etl_pipelines.errors import JobInputError
from etl_pipelines.lifecycle.progress import Progress, describe
from etl_pipelines.loading.columns import type_column
from etl_pipelines.loading.reader import csv_batches, read_header
from etl_pipelines.loading.rejects import Rejects
from etl_pipelines.loading.stage import Counts, Stage, typed_batches


def typed(values: list[str | None], kind: str) -> list[tuple[object, bool]]:
    result = type_column(pa.array(values, pa.string()), kind)
    return list(zip(result.values.to_pylist(), result.bad.tolist(), strict=True))


@pytest.mark.parametrize("mixed", [False, True])  # a clean column takes the fast path; a mixed one not
def test_ints(mixed: bool) -> None:
    good = {"1": 1, " 2 ": 2, "+3": 3, "-4": -4, "12.0": 12, "1e3": 1000}
    bad = ["1.5", "abc", "99999999999999999999", "0x10"] if mixed else []
    cells = typed([*good, *bad, "", None], "int")
    assert cells == [(v, False) for v in good.values()] + [(None, True)] * len(bad) + [(None, False)] * 2


def test_floats_bools_and_strings() -> None:
    assert typed(["1.5", "-.5", "2e-3", "+7", "nan", "inf", "1e400", "x", " "], "float") == [
        (1.5, False), (-0.5, False), (0.002, False), (7.0, False),
        (None, True), (None, True), (None, True), (None, True), (None, False),
    ]  # fmt: skip
    assert typed(["TRUE", "no", "1", "Y", "maybe", ""], "bool") == [
        (True, False), (False, False), (True, False), (True, False), (None, True), (None, False),
    ]  # fmt: skip
    assert typed(["  a b ", "", None], "str") == [("a b", False), (None, False), (None, False)]


def test_datetimes_are_real_calendar_values_in_utc() -> None:
    utc = UTC
    cells = typed(
        [
            "2020-01-01",
            "2020-01-01T10:00",
            "2020-01-01 10:00:00+02:00",
            "2020-02-29T23:59:59.123456Z",
            "2000-02-29T10:00:59+0530",
            "2020-02-30",  # no such day
            "2019-02-29",  # not a leap year
            "1900-02-29",
            "2020-13-01",
            "2020-01-01T24:00",
            "2020-01-01T10:00:61",
            "2020-01-01Z",
            "01/02/2020",
        ],
        "datetime",
    )
    values = [v for v, _ in cells]
    assert values[:5] == [
        datetime(2020, 1, 1, tzinfo=utc),
        datetime(2020, 1, 1, 10, tzinfo=utc),
        datetime(2020, 1, 1, 8, tzinfo=utc),
        datetime(2020, 2, 29, 23, 59, 59, 123456, tzinfo=utc),
        datetime(2000, 2, 29, 4, 30, 59, tzinfo=utc),
    ]
    assert [bad for _, bad in cells] == [False] * 5 + [True] * 8
    # A clean column (the fast path) agrees.
    assert typed(["2020-01-01T10:00:00Z", "2020-01-02T00:00:00+01:00"], "datetime")[1] == (
        datetime(2020, 1, 1, 23, tzinfo=utc),
        False,
    )
    assert typed(["2020-01-01T23:00:00-05:00", "2020-01-01"], "date") == [
        (date(2020, 1, 2), False),
        (date(2020, 1, 1), False),
    ]


TRICKY = {
    "int": [
        "0",
        "-0",
        "+7",
        " 12 ",
        "12.0",
        "1e3",
        "1.5",
        "0x10",
        "0X1F",
        "1_000",
        "١٢",
        "9007199254740992.0",
        "1234567890123456789",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "99999999999999999999",
        "1e19",
        "nan",
        "inf",
        "",
    ],
    "float": [
        "1.5",
        "-.5",
        "+1.5e3",
        "-0",
        "nan",
        "NaN",
        "inf",
        "Infinity",
        "1e400",
        "0x10",
        "1_0",
        "١٢",
        "",
    ],
    "bool": ["true", "T", "YES", "0", "2", "", "truth"],
    "datetime": [
        "2020-01-01",
        "2020-01-01T10:00",
        "2020-01-01 10:00:00",
        "2020-01-01T10:00:00Z",
        "2020-01-01T10:00:00.123456+05:30",
        "2020-01-01T10:00:00-0800",
        "2020-01-01T10:00:00+02",
        "2020-01-01T10",
        "2020-01-01 10",
        "2020-01-01T10Z",
        "2020-01-01T10+05",
        "0000-01-01",
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:59:59Z",
        "2020-02-30",
        "2020-01-01T10:00:00+24:00",
        "2020-01-01T10:00:00+05:60",
        "2020-01-01T10:00:00+0560",
        "2020-01-01T10:00:00.1234567Z",
        "2020-01-01Z",
        "",
    ],
}
TRICKY["date"] = TRICKY["datetime"]


@pytest.mark.parametrize("kind", sorted(TRICKY))
def test_a_value_is_typed_the_same_whatever_its_neighbours(kind: str) -> None:
    """Clean blocks take Arrow's cast at once, blocks with a bad value are checked value by value:
    the two must agree on every value."""
    for value in TRICKY[kind]:
        alone = type_column(pa.array([value], pa.string()), kind)
        beside_bad = type_column(pa.array([value, "zzz"], pa.string()), kind)
        beside_good = type_column(pa.array([value, TRICKY[kind][0]], pa.string()), kind)
        cells = {
            (alone.values[0].as_py(), bool(alone.bad[0])),
            (beside_bad.values[0].as_py(), bool(beside_bad.bad[0])),
            (beside_good.values[0].as_py(), bool(beside_good.bad[0])),
        }
        assert len(cells) == 1, (kind, value, cells)


def test_int_and_datetime_limits() -> None:
    assert typed(["9223372036854775807", "-9223372036854775808", "9223372036854775808"], "int") == [
        (9223372036854775807, False), (-9223372036854775808, False), (None, True),
    ]  # fmt: skip
    assert typed(["1234567890123456789", "0x10", "9007199254740993.0", "1e15", "2.5e2"], "int") == [
        (1234567890123456789, False), (None, True), (9007199254740993, False), (None, True), (250, False),
    ]  # fmt: skip
    bad = ["0000-06-01", "0001-01-01T00:30:00+01:00", "2020-01-01T10:00:00+24:00", "2020-01-01T10"]
    assert [b for _, b in typed(bad, "datetime")] == [True] * 4
    assert typed(["0001-01-01T00:30:00+00:30"], "datetime") == [(datetime(1, 1, 1, tzinfo=UTC), False)]


CSV = (
    b"id,name,joined\n"  # line 1
    b"1,Ada,2020-01-02\n"
    b"\n"  # blank: skipped, not counted
    b'2,"Bob\nSmith",2021-03-04\n'  # one record over two physical lines: line 4
    b"3,Cy\n"  # malformed: line 5
    b"4,D\xe9,2022-01-01\n"  # not UTF-8 (latin-1 e-acute): line 6
    b"5,Ed,2022-02-30\n"  # line 7
    b"6,Flo,2024-09-10,extra\n"  # malformed: line 8
    b"7,Gus,2024-09-11\n"
)


def load(content: bytes, columns: dict[str, str], block_bytes: int = 1 << 20, **kw):
    stream = io.BytesIO(content)
    header = read_header(stream, "utf-8", "t.csv")
    rejects, counts = Rejects(**kw), Counts()
    batches = csv_batches(stream, list(columns), name="t.csv", header=header, block_bytes=block_bytes)
    out = list(typed_batches(batches, columns, rejects, counts))
    rows = [row for batch in out for row in batch.to_pylist()]
    return rows, rejects, counts


@pytest.mark.parametrize("block_bytes", [40, 1 << 20])  # a batch per row or two, or one batch
def test_every_row_is_loaded_or_rejected_with_its_line(block_bytes: int) -> None:
    columns = {"id": "int", "name": "str", "joined": "date"}
    rows, rejects, counts = load(CSV, columns, block_bytes)
    assert [(r["id"], r["etl_line"]) for r in rows] == [(1, 2), (2, 4), (7, 9)]
    assert rows[1]["name"] == "Bob\nSmith"
    assert [(r.line, r.reason) for r in rejects.in_order()] == [
        (5, "malformed: 2 fields, the header has 3"),
        (6, "name: (not UTF-8) is not valid UTF-8"),
        (7, "joined: '2022-02-30' is not a date"),
        (8, "malformed: 4 fields, the header has 3"),
    ]
    assert rejects.in_order()[3].text == "6,Flo,2024-09-10,extra"
    assert (counts.rows_read, counts.rows_staged, counts.blank, rejects.count) == (7, 3, 1, 4)
    assert rejects.by_kind == {"malformed": 2, "name: not valid UTF-8": 1, "joined: not a date": 1}


def test_only_rows_without_any_value_are_blank() -> None:
    """A row whose loaded columns are empty but another is not is a row (of NULLs); an empty
    line, or one of separators only, is blank: left out and counted."""
    rows, rejects, counts = load(b"id,email\n1,a@x\n2,\n\n,\n3,\n", {"email": "str"})
    assert [(r["email"], r["etl_line"]) for r in rows] == [("a@x", 2), (None, 3), (None, 6)]
    assert (counts.rows_read, counts.blank, rejects.count) == (3, 2, 0)


def test_many_malformed_rows_between_and_after_good_ones() -> None:
    lines = [b"a,b"]
    expected = []
    for i in range(2, 20_002):
        if i % 3 == 0 or i > 15_000:
            lines.append(b"x,y,z")
        else:
            lines.append(b"%d,v" % i)
            expected.append(i)
    rows, rejects, counts = load(b"\n".join(lines) + b"\n", {"a": "int"}, block_bytes=4096, keep=5)
    assert [r["etl_line"] for r in rows] == [r["a"] for r in rows] == expected
    assert rejects.count == 20_000 - len(expected) and counts.rows_read == 20_000
    assert [r.line for r in rejects.in_order()] == [3, 6, 9, 12, 15]


def test_a_record_longer_than_a_block_refuses_the_file_saying_where() -> None:
    content = b'a,b\n1,x\n2,"' + b"y" * 5000 + b'"\n3,z\n'
    with pytest.raises(JobInputError, match="a record after line 2 is longer than the reader's 1 KiB block"):
        load(content, {"a": "int", "b": "str"}, block_bytes=1024)
    with pytest.raises(JobInputError, match="after line 2"):
        load(b'a,b\n1,x\n2,"unclosed\n' + b"3,z\n" * 1000, {"a": "int"}, block_bytes=1024)


def test_rejects_beyond_the_kept_ones_are_counted() -> None:
    content = b"n\n" + b"x\n" * 50 + b"1\n"
    rows, rejects, counts = load(content, {"n": "int"}, keep=5)
    assert len(rows) == 1 and rejects.count == 50 and len(rejects.kept) == 5
    assert rejects.by_kind == {"n: not a int": 50} and counts.rows_read == 51


def test_a_file_without_the_columns_or_a_header_is_refused() -> None:
    with pytest.raises(JobInputError, match="no column"):
        load(b"a,b\n1,2\n", {"c": "int"})
    with pytest.raises(JobInputError, match="empty"):
        load(b"", {"c": "int"})
    with pytest.raises(JobInputError, match="header is not utf-8"):
        load(b"\xff\xfe,x\n", {"c": "int"})


def test_stage_merges_first_of_equal_keys_and_upserts_on_sqlite() -> None:
    engine = sa.create_engine("sqlite://")
    columns = {"id": "int", "name": "str"}
    target = sa.Table(
        "t", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True), sa.Column("name", sa.Text)
    )
    with engine.begin() as connection:
        target.create(connection)
        connection.execute(target.insert(), [{"id": 1, "name": "old"}, {"id": 9, "name": "kept"}])
        rows, _, _ = load(b"id,name\n1,first\n2,b\n1,second\n", columns)
        stage = Stage(connection, columns)
        stage.load(iter([pa.RecordBatch.from_pylist(rows)]))
        assert stage.merge(target, ["id"], replace=False) == 2
        assert connection.execute(sa.text("SELECT id, name FROM t ORDER BY id")).all() == [
            (1, "first"),
            (2, "b"),
            (9, "kept"),
        ]


def test_progress_reports_rates_and_only_changes() -> None:
    lines: list[str] = []
    progress = Progress(log=lines.append, log_seconds=0)
    assert progress.snapshot() is None and progress.unwritten() is None
    progress.update(phase="reading", rows_read=1000, rows_rejected=2)
    report = progress.unwritten()
    assert report is not None and report[0]["rows_read"] == 1000 and "rows_per_second" in report[0]
    assert progress.unwritten() is not None  # not written yet: still due
    progress.written(report[1])
    assert progress.unwritten() is None  # nothing new since
    assert lines and lines[0].startswith("progress: reading, 1,000 read, 2 rejected")
    assert describe({"rows_moved": 5, "rows_per_second": 10}) == "5 moved (10 rows/s)"
