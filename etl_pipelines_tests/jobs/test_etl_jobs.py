"""ETL and maintenance job types, executed in process against SQLite and PostgreSQL targets."""

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_pipelines.store import JobStatus
from etl_pipelines_tests.jobs.helpers import count, execute

# Executes whole Dagster runs (or builds the package): the full suite, not `make test-fast`.
pytestmark = pytest.mark.slow

USERS_CSV = """id,name,email,department,salary,joined
1,Ada,ada@example.com,engineering,120000.50,2020-01-02
2,Bob,bob@example.com,sales,70000,2021-03-04
2,Bob again,bob2@example.com,sales,71000,2021-03-04
3,Cy,cy@example.com,sales,not-a-number,2022-05-06
4,Di,di@example.com,finance,90000,2023-07-08,extra-field
5,Ed,ed@example.com,finance,80000,not-a-date
6,Flo,flo@example.com,engineering,110000,2024-09-10
"""
COLUMNS = {"id": "int", "name": "str", "department": "str", "salary": "float", "joined": "date"}


@pytest.fixture
def import_dir(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "imports"
    directory.mkdir()
    clean_env.setenv("ETL_IMPORT_DIR", str(directory))
    return directory


def test_data_import_csv_counts_and_types(target: sa.Engine, import_dir: Path) -> None:
    (import_dir / "users.csv").write_text(USERS_CSV)
    # A deliberately dirty file: 3 of its 7 rows are rejected, past the default limit of 10%.
    params = dict(target_table="auth.staff", columns=COLUMNS, key_columns=["id"], max_rejected_share=0.5)
    record, result = execute("data_import", source_csv="users.csv", **params)
    assert record.status == JobStatus.COMPLETED, record.error
    (output,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    shown = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert shown["rows_written"] == 3 and shown["rows_rejected"] == 3 and shown["duplicates"] == 1
    assert record.result == {
        "source": "users.csv",
        "target_table": "auth.staff",
        "rows_read": 7,
        "rows_rejected": 3,  # a salary, a date, and a line with an extra field
        "rows_malformed": 1,
        "rows_blank": 0,
        "duplicates": 1,  # the second id 2
        "rows_written": 3,
        "reject_table": "auth.staff_rejects",
        "rejected": {
            "by_kind": {"salary: not a float": 1, "malformed": 1, "joined: not a date": 1},
            "first": [
                {"line": 4, "reason": "duplicate of line 3 (id=2): the first is loaded"},
                {"line": 5, "reason": "salary: 'not-a-number' is not a float"},
                {"line": 6, "reason": "malformed: 7 fields, the header has 6"},
                {"line": 7, "reason": "joined: 'not-a-date' is not a date"},
            ],
        },
    }
    with target.connect() as connection:
        kept = connection.execute(
            sa.text("SELECT line, reason, row_text FROM auth.staff_rejects ORDER BY line")
        ).all()
    assert [(r.line, r.row_text) for r in kept] == [
        (4, "id=2"),
        (5, "3,Cy,sales,not-a-number,2022-05-06"),
        (6, "4,Di,di@example.com,finance,90000,2023-07-08,extra-field"),
        (7, "5,Ed,finance,80000,not-a-date"),
    ]
    with target.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, name, salary, joined FROM auth.staff ORDER BY id")
        ).all()
    assert [(r.id, r.name, float(r.salary)) for r in rows] == [
        (1, "Ada", 120000.5),
        (2, "Bob", 70000.0),
        (6, "Flo", 110000.0),
    ]
    assert str(rows[0].joined).startswith("2020-01-02")

    # replace=True reloads; without it, rows with the same keys replace the target's (an upsert).
    record, _ = execute("data_import", source_csv="users.csv", replace=True, **params)
    assert record.status == JobStatus.COMPLETED and count(target, "auth.staff") == 3
    (import_dir / "users.csv").write_text(
        "id,name,department,salary,joined\n6,Flo,sales,1,2024-09-10\n7,Gus,it,2,\n"
    )
    record, _ = execute("data_import", source_csv="users.csv", **params)
    assert record.status == JobStatus.COMPLETED and record.result["rows_written"] == 2
    with target.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, department, joined FROM auth.staff ORDER BY id")).all()
    assert [(r.id, r.department, r.joined) for r in rows][-2:] == [
        (6, "sales", rows[-2].joined),
        (7, "it", None),
    ]
    assert count(target, "auth.staff") == 4 and record.result["reject_table"] is None
    # Each job's rejected rows are its own: the two earlier imports' three each, none of this one.
    with target.connect() as connection:
        jobs = connection.execute(
            sa.text("SELECT job_id, count(*) AS n FROM auth.staff_rejects GROUP BY job_id")
        ).all()
    assert sorted(n for _, n in jobs) == [4, 4] and record.id not in {job for job, _ in jobs}


@pytest.mark.parametrize("source_kind", ["postgres", "sqlite"])
def test_data_import_from_a_database_streams_its_rows(
    target: sa.Engine, pg_url: str, clean_env: pytest.MonkeyPatch, tmp_path: Path, source_kind: str
) -> None:
    """A table of another database, exported by its own COPY (PostgreSQL) or a cursor (SQLite),
    typed and rejected like a file's rows: the line of a row is its place in the export."""
    url = pg_url if source_kind == "postgres" else f"sqlite:///{tmp_path / 'source.sqlite'}"
    clean_env.setenv("ETL_DATABASE_URL_SOURCE", url)
    source = sa.create_engine(url)
    with source.begin() as connection:
        if source_kind == "postgres":
            connection.execute(sa.text("DROP SCHEMA IF EXISTS src CASCADE"))
            connection.execute(sa.text("CREATE SCHEMA src"))
            table = "src.people"
        else:
            table = "people"
        connection.execute(
            sa.text(f"CREATE TABLE {table} (id INTEGER, name TEXT, score TEXT, joined TIMESTAMP, extra TEXT)")
        )
        connection.execute(
            sa.text(
                f"INSERT INTO {table} VALUES (1, 'a,b \"quoted\"', '1.5', '2026-01-01 10:00:00', 'x'),"
                " (2, NULL, 'n/a', '2026-01-02 00:00:00', 'y'), (3, 'multi\nline', '', NULL, 'z')"
            )
        )
    columns = {"id": "int", "name": "str", "score": "float", "joined": "datetime"}
    record, _ = execute(
        "data_import",
        source_database="source",
        source_table=table,
        target_table="auth.people",
        columns=columns,
        key_columns=["id"],
        max_rejected_share=0.5,
    )
    assert record.status == JobStatus.COMPLETED, record.error
    assert (record.result["rows_read"], record.result["rows_rejected"], record.result["rows_written"]) == (
        3,
        1,
        2,
    )
    assert record.result["rejected"]["first"] == [{"line": 3, "reason": "score: 'n/a' is not a float"}]
    with target.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, name, score, joined FROM auth.people ORDER BY id")
        ).all()
    assert [(r.id, r.name, r.score) for r in rows] == [(1, 'a,b "quoted"', 1.5), (3, "multi\nline", None)]
    assert str(rows[0].joined).startswith("2026-01-01 10:00:00") and rows[1].joined is None
    if source_kind == "postgres":
        with source.begin() as connection:
            connection.execute(sa.text("DROP SCHEMA src CASCADE"))
    source.dispose()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "cannot parse bad.csv"),
        (b"\xff\xfe\x00\x81binary\x00garbage", "cannot parse bad.csv"),
        (b"identifier,label\n1,a\n", "no column(s) department, id, joined, name, salary in its header"),
    ],
)
def test_data_import_unparseable_file_fails_and_writes_nothing(
    target: sa.Engine, import_dir: Path, content: bytes, message: str
) -> None:
    (import_dir / "bad.csv").write_bytes(content)
    record, _ = execute("data_import", source_csv="bad.csv", target_table="auth.staff", columns=COLUMNS)
    assert record.status == JobStatus.FAILED and record.retry_count == 0
    assert record.error.startswith("JobInputError: ") and message in record.error
    assert not sa.inspect(target).has_table("staff", schema="auth")


def test_data_import_refuses_paths_outside_the_import_dir(target: sa.Engine, import_dir: Path) -> None:
    record, _ = execute(
        "data_import", source_csv="../../etc/passwd", target_table="auth.x", columns={"a": "str"}
    )
    assert record.status == JobStatus.FAILED and "outside ETL_IMPORT_DIR" in record.error


def days_since(year: int, month: int, day: int) -> int:
    """Days from a date to now: a cutoff that falls on that date, far from any row's timestamp."""
    return (datetime.now(UTC) - datetime(year, month, day, tzinfo=UTC)).days


def test_archive_old_rows_moves_exactly_the_old_rows(target: sa.Engine) -> None:
    with target.begin() as connection:
        connection.execute(sa.text("CREATE TABLE auth.events (id INTEGER PRIMARY KEY, created_at TIMESTAMP)"))
        connection.execute(
            sa.text("INSERT INTO auth.events VALUES (:id, :ts)"),
            [{"id": i, "ts": f"20{10 + i % 15:02d}-01-01 00:00:00"} for i in range(1, 101)]
            + [{"id": 1000, "ts": "2999-01-01 00:00:00"}],
        )
    with target.connect() as connection:
        old = set(
            connection.execute(
                sa.text("SELECT id FROM auth.events WHERE created_at < '2020-06-01'")
            ).scalars()
        )
    record, _ = execute(
        "archive_old_rows", table="auth.events", older_than_days=days_since(2020, 6, 1), batch_size=7
    )
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.result["rows_moved"] == len(old) and record.result["batches"] == -(-len(old) // 7)
    with target.connect() as connection:
        archived = set(connection.execute(sa.text("SELECT id FROM auth.events_archive")).scalars())
        remaining = set(connection.execute(sa.text("SELECT id FROM auth.events")).scalars())
    assert archived == old and not archived & remaining and len(archived | remaining) == 101


def test_sync_table_copies_new_and_changed_rows(
    target: sa.Engine, pg_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    # The source is this module's PostgreSQL database, schema src; the target is SQLite or PostgreSQL.
    clean_env.setenv("ETL_DATABASE_URL_WAREHOUSE", pg_url)
    source = sa.create_engine(pg_url)
    with source.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA IF EXISTS src CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA src"))
        connection.execute(
            sa.text("CREATE TABLE src.items (id INTEGER PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
        )
        connection.execute(
            sa.text("INSERT INTO src.items VALUES (1, 'a', '2026-01-01'), (2, 'b', '2026-01-02')")
        )
    params = dict(source_database="warehouse", source_table="src.items", target_table="auth.items")
    record, _ = execute("sync_table", **params)
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.result["rows_inserted"] == 2 and record.result["watermark"] is None
    with source.begin() as connection:
        connection.execute(
            sa.text("UPDATE src.items SET name = 'b2', updated_at = '2026-02-01' WHERE id = 2")
        )
        connection.execute(sa.text("INSERT INTO src.items VALUES (3, 'c', '2026-02-02')"))
    record, _ = execute("sync_table", **params)
    # The row at the watermark (id 2's old stamp) is copied again harmlessly; 1 is not.
    assert (record.result["rows_inserted"], record.result["rows_updated"]) == (1, 1)
    with target.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, name FROM auth.items ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "a"), (2, "b2"), (3, "c")]
    source.dispose()


def test_integrity_check_reports_orphans_and_counts(target: sa.Engine) -> None:
    with target.begin() as connection:
        connection.execute(sa.text("CREATE TABLE auth.parents (id INTEGER PRIMARY KEY)"))
        connection.execute(sa.text("CREATE TABLE auth.children (id INTEGER PRIMARY KEY, parent_id INTEGER)"))
        connection.execute(sa.text("INSERT INTO auth.parents VALUES (1), (2)"))
        connection.execute(sa.text("INSERT INTO auth.children VALUES (1, 1), (2, 2), (3, NULL)"))
    ok, _ = execute(
        "integrity_check", table="auth.children", references=["parent_id->auth.parents.id"], min_rows=1
    )
    assert ok.status == JobStatus.COMPLETED
    assert ok.result["checks"] == [{"check": "parent_id -> auth.parents.id", "orphans": 0, "sample": []}]
    with target.begin() as connection:
        connection.execute(sa.text("INSERT INTO auth.children VALUES (4, 99), (5, 98)"))
    bad, _ = execute(
        "integrity_check", table="auth.children", references=["parent_id->auth.parents.id"], max_rows=4
    )
    assert bad.status == JobStatus.FAILED and bad.retry_count == 0
    assert bad.error.startswith("IntegrityViolation: 2 violation(s): ")
    report = json.loads(bad.error.split(": ", 2)[2])
    assert report["checks"][0]["orphans"] == 2 and report["checks"][0]["sample"] == ["98", "99"]
    assert report["violations"] == ["parent_id -> auth.parents.id", "row count 5 > max_rows 4"]


def test_vacuum_analyze_and_reindex(target: sa.Engine) -> None:
    execute("populate_records", rows=20)
    with target.begin() as connection:
        # SQLite names an attached database's index by its schema, PostgreSQL by the table's.
        if connection.dialect.name == "sqlite":
            connection.execute(sa.text("CREATE INDEX auth.users_department ON users (department)"))
        else:
            connection.execute(sa.text("CREATE INDEX users_department ON auth.users (department)"))
    record, _ = execute("vacuum_analyze", table="auth.users")
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.result["operations"][:1] == ["vacuum"] and "analyze" in record.result["operations"]
    record, _ = execute("vacuum_analyze")  # every table of the allowed schemas
    assert record.status == JobStatus.COMPLETED, record.error
    assert record.result["tables"] == ["auth.users"] and record.result["skipped"] == []
    record, _ = execute("reindex", table="auth.users")
    assert record.status == JobStatus.COMPLETED, record.error
    assert "users_department" in record.result["indexes"]


def test_slow_query_past_its_timeout_is_cancelled(
    pg_url: str, clean_env: pytest.MonkeyPatch, tmp_path
) -> None:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    clean_env.setenv("ETL_DATABASE_URL", pg_url)
    clean_env.setenv("ETL_RETRY_DELAYS", "")
    clean_env.setenv("ETL_JOB_TIMEOUT", "1")
    record, _ = execute("slow_query", duration=60)
    assert record.status == JobStatus.FAILED
    assert record.error == "JobTimeoutError: a statement ran past the job's timeout of 1 s and was cancelled"
    engine = sa.create_engine(pg_url)
    with engine.connect() as connection:
        sleeping = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active' "
                "AND datname = current_database()"  # other suites may share the server
            )
        ).scalar_one()
    engine.dispose()
    assert sleeping == 0
