"""What a database source or target can do to an import or a sync, on PostgreSQL: values that
look like NULL, an export that fails half-way, an export left early, stale rejected rows."""

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl_pipelines.loading.reader import export_csv
from etl_pipelines.store import JobStatus
from etl_pipelines_tests.jobs.helpers import execute

pytestmark = pytest.mark.slow


@pytest.fixture
def source(pg_url: str, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[sa.Engine]:
    """The module's PostgreSQL database as both the target and the named source database `src`."""
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    clean_env.setenv("ETL_DATABASE_URL", pg_url)
    clean_env.setenv("ETL_DATABASE_URL_SRC", pg_url)
    clean_env.setenv("ETL_RETRY_DELAYS", "0,0")
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        for schema in ("auth", "srcdata"):
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield engine
    engine.dispose()


def test_sync_keeps_values_that_look_like_null(source: sa.Engine) -> None:
    with source.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE srcdata.items (id INTEGER PRIMARY KEY, name TEXT, amount FLOAT8,"
                " doc JSONB, updated_at TIMESTAMPTZ)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO srcdata.items VALUES (1, 'N/A', 'NaN', 'null', '2026-01-01'),"
                " (2, 'NULL', 1.5, '{\"a\": null}', '2026-01-02'), (3, 'nan', 2, NULL, '2026-01-03'),"
                " (4, '', 3, '[]', '2026-01-04'), (5, NULL, NULL, '\"#N/A\"', '2026-01-05')"
            )
        )
    record, _ = execute(
        "sync_table", source_database="src", source_table="srcdata.items", target_table="auth.items"
    )
    assert record.status == JobStatus.COMPLETED, record.error
    with source.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, name, amount FROM auth.items ORDER BY id")).all()
    assert [(r.id, r.name) for r in rows] == [(1, "N/A"), (2, "NULL"), (3, "nan"), (4, ""), (5, None)]
    assert math.isnan(rows[0].amount) and [r.amount for r in rows[1:]] == [1.5, 2.0, 3.0, None]
    with source.connect() as connection:
        docs = connection.execute(sa.text("SELECT id, doc::text FROM auth.items ORDER BY id")).all()
    assert [d for _, d in docs] == ["null", '{"a": null}', None, "[]", '"#N/A"']


def test_an_export_that_fails_is_the_error_and_is_not_retried_when_permanent(source: sa.Engine) -> None:
    """The source's own error (division by zero at its 40,000th row), not "cannot parse": a
    permanent database error fails the job at once, the target untouched."""
    with source.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE VIEW srcdata.bad AS SELECT 1000 / (40000 - n) AS id, 'x' || n AS name"
                " FROM generate_series(1, 50000) AS n"
            )
        )
    record, _ = execute(
        "data_import",
        source_database="src",
        source_table="srcdata.bad",
        target_table="auth.bad",
        columns={"id": "int", "name": "str"},
    )
    assert record.status == JobStatus.FAILED and record.retry_count == 0, record.to_dict()
    assert "DivisionByZero" in (record.error or ""), record.error
    assert not sa.inspect(source).has_table("bad", schema="auth")


def test_an_export_left_early_is_cancelled_on_the_source(source: sa.Engine) -> None:
    """A load that stops reading (its own error) leaves no COPY running on the source."""
    with source.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE srcdata.big AS SELECT n AS id, repeat('x', 200) AS pad"
                " FROM generate_series(1, 2000000) AS n"
            )
        )
    with source.connect() as connection:
        with export_csv(
            connection, "SELECT id, pad FROM srcdata.big", None, ["id", "pad"], "export-test"
        ) as pipe:
            assert pipe.reader.read(1 << 20)  # it streams; then the consumer leaves
            started = time.monotonic()
        left = time.monotonic() - started
        assert left < 10, left  # not a drain of the remaining ~400 MB
        # The connection is usable again at once.
        assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
    with source.connect() as observer:
        active = observer.execute(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE 'COPY (SELECT id, pad%'"
            )
        ).scalar_one()
    assert active == 0
    assert not [t for t in threading.enumerate() if t.name == "export-test"]


def test_a_clean_load_replaces_the_rejected_rows_of_its_job(
    source: sa.Engine, tmp_path: Path, clean_env
) -> None:
    """keep_rejects with nothing to keep still clears the job's earlier rows (a retry's clean load)."""
    from etl_pipelines.identifiers import TableName
    from etl_pipelines.loading.rejects import Rejects, keep_rejects

    name = TableName("auth", "t_rejects")
    dirty = Rejects()
    dirty.add("malformed", 3, "malformed: 3 fields, the header has 2", "a,b,c")
    with source.begin() as connection:
        keep_rejects(connection, name, "job-1", "run-1", dirty)
        keep_rejects(connection, name, "job-2", "run-9", dirty)
    with source.begin() as connection:
        keep_rejects(connection, name, "job-1", "run-2", Rejects())  # its retry loaded cleanly
        left = connection.execute(sa.text("SELECT job_id FROM auth.t_rejects")).scalars().all()
    assert left == ["job-2"]
    with source.begin() as connection:  # no table, nothing to keep: nothing made
        keep_rejects(connection, TableName("auth", "none_rejects"), "job-3", "run-3", Rejects())
    assert not sa.inspect(source).has_table("none_rejects", schema="auth")
