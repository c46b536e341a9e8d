"""Each sample job type executed in process against a real target database (SQLite and PostgreSQL)."""

from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from etl_pipelines.definitions import defs
from etl_pipelines.framework.dispatch import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.resources.database import TargetDatabase
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStatus, JobStore


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch, tmp_path) -> Iterator[sa.Engine]:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path))
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'etl.sqlite'}"
    else:
        url = request.getfixturevalue("pg_url")
    clean_env.setenv("ETL_DATABASE_URL", url)
    clean_env.setenv("ETL_RETRY_DELAYS", "0,0")
    engine = TargetDatabase().engine()
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS auth.users"))
        connection.execute(sa.text("DROP TABLE IF EXISTS auth.scratch"))
    yield engine


def execute(job_type: str, **params: Any) -> tuple[JobRecord, dg.ExecuteInProcessResult]:
    job_cls = get_job_type(job_type)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(job_type).execute_in_process(
            run_config=run_config_for(job_cls.model_construct(**params)),
            instance=instance,
            raise_on_error=False,
        )
    return JobStore(Settings.from_env().database_url).require(result.run_id), result


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


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
    assert materialization.step_output_data.metadata["result"].value == record.result

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


def test_failed_job_retries_then_fails(target: sa.Engine) -> None:
    record, result = execute("failed_job", message="nope")
    assert not result.success
    assert record.status == JobStatus.FAILED
    assert record.retry_count == 2 and record.max_retries == 2  # ETL_RETRY_DELAYS=0,0
    assert record.error == "FailedJobError: nope"
    assert "FailedJobError: nope" in record.traceback
    restarts = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_RESTARTED]
    assert len(restarts) == 2
