"""Each sample job type executed in process against a real target database (SQLite and PostgreSQL)."""

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_pipelines.store import JobStatus
from etl_pipelines_tests.jobs.helpers import count, execute

# Executes whole Dagster runs (or builds the package): the full suite, not `make test-fast`.
pytestmark = pytest.mark.slow


def test_populate_aggregate_truncate_drop(target: sa.Engine) -> None:
    record, result = execute("populate_records", rows=50)
    assert result.success and record.status == JobStatus.COMPLETED
    assert record.result == {"table": "auth.users", "rows": 50}
    assert count(target, "auth.users") == 50
    execute("populate_records", rows=50)  # re-runnable
    assert count(target, "auth.users") == 50

    record, result = execute("data_aggregation")
    assert record.status == JobStatus.COMPLETED, record.error
    groups = record.result["groups"]
    assert record.result["rows"] == 50 and len(groups) == 5
    assert sum(g["count"] for g in groups) == 50
    totals = [g["total"] for g in groups]
    assert totals == sorted(totals, reverse=True)
    with target.connect() as connection:
        expected = connection.execute(
            sa.text("SELECT department, sum(salary) FROM auth.users GROUP BY department")
        ).all()
    assert {g["department"]: g["total"] for g in groups} == {d: float(t) for d, t in expected}
    # The result is shown in the UI as run metadata.
    (materialization,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    metadata = materialization.step_output_data.metadata
    assert metadata["result"].value == record.result
    assert metadata["rows"].value == 50
    assert metadata["groups"].value.startswith("| department | total | count | average |")

    record, _ = execute("truncate_table", table="auth.users")
    assert record.status == JobStatus.COMPLETED and record.result == {
        "table": "auth.users",
        "rows_removed": 50,
    }
    assert count(target, "auth.users") == 0

    record, _ = execute("drop_table", table="auth.users")
    assert record.result == {"table": "auth.users", "dropped": True}
    assert not sa.inspect(target).has_table("users", schema="auth")
    record, _ = execute("drop_table", table="auth.users", if_exists=True)
    assert record.status == JobStatus.COMPLETED and record.result["dropped"] is False


def test_bad_identifier_from_the_launchpad_fails_before_sql(target: sa.Engine) -> None:
    execute("populate_records", rows=3)
    record, result = execute("truncate_table", table="auth.users; DROP TABLE auth.users")
    assert not result.success
    assert record.status == JobStatus.FAILED and record.retry_count == 0
    assert record.error.startswith("IdentifierError: invalid table name")
    record, _ = execute("drop_table", table="public.users")
    assert record.status == JobStatus.FAILED and "not in an allowed schema" in record.error
    assert count(target, "auth.users") == 3


def test_slow_query_and_fibonacci(target: sa.Engine) -> None:
    record, _ = execute("slow_query", duration=0.2)
    assert record.status == JobStatus.COMPLETED and record.result == {"slept_seconds": 0.2}
    for n, expected in [(0, 0), (1, 1), (10, 55), (90, 2880067194370816120)]:
        record, _ = execute("fibonacci", n=n)
        assert record.result == expected


def test_failed_job_attempt_schedules_its_retry(target: sa.Engine) -> None:
    """One run is one attempt: a failure ends the run and leaves the wait to the job table."""
    record, result = execute("failed_job", message="nope")
    assert not result.success
    assert record.status == JobStatus.WAITING_RETRY and record.retry_count == 0 and record.max_retries == 2
    assert record.next_retry_at is not None and record.heartbeat_at is None
    assert record.error == "FailedJobError: nope"
    assert "FailedJobError: nope" in record.traceback
    kinds = [e.event_type for e in result.all_events]
    assert (
        dg.DagsterEventType.STEP_RESTARTED not in kinds and dg.DagsterEventType.STEP_UP_FOR_RETRY not in kinds
    )
