"""The job table on SQLite and PostgreSQL: lifecycle, filters, timestamps, JSON."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from etl_pipelines.store import JobNotFoundError, JobStatus, JobStore


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        yield JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    else:
        url = request.getfixturevalue("pg_url")
        store = JobStore(url)
        with store.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM etl_jobs"))
        yield store


def new(store: JobStore, job_id: str, **fields):
    values = dict(
        id=job_id,
        job_type="fibonacci",
        job_class="x.Fibonacci",
        queue="low",
        payload={"n": 1},
        max_retries=3,
        run_id=job_id,
    )
    values.update(fields)
    return store.create(**values)


def test_lifecycle(store: JobStore) -> None:
    record = new(store, "j1")
    assert record.status == JobStatus.QUEUED and record.run_ids == ["j1"]
    assert record.created_at.tzinfo is not None

    started = store.mark_started("j1", "j1", retry_count=0)
    assert started.status == JobStatus.STARTED and started.started_at is not None
    due = datetime.now(UTC) + timedelta(seconds=60)
    waiting = store.mark_waiting_retry("j1", error="E: x", traceback="tb", next_retry_at=due)
    assert waiting.status == JobStatus.WAITING_RETRY
    again = store.mark_started("j1", "j1", retry_count=1)
    assert again.retry_count == 1 and again.next_retry_at is None
    assert again.started_at == started.started_at  # the first start is kept
    done = store.mark_completed("j1", {"groups": [{"a": 1.5}], "unicode": "é"})
    fetched = store.require("j1")
    assert fetched.status == JobStatus.COMPLETED and fetched.result == {
        "groups": [{"a": 1.5}],
        "unicode": "é",
    }
    assert fetched.error is None and fetched.traceback is None
    assert fetched.finished_at == done.finished_at and fetched.finished_at.tzinfo == UTC
    assert fetched.created_at <= fetched.started_at <= fetched.finished_at <= fetched.updated_at


def test_reexecution_appends_runs(store: JobStore) -> None:
    new(store, "j2")
    store.mark_failed("j2", error="E", traceback="tb")
    requeued = store.mark_queued("j2", "r2")
    assert requeued.status == JobStatus.QUEUED and requeued.run_ids == ["j2", "r2"]
    assert requeued.run_id == "r2" and requeued.finished_at is None
    assert store.mark_queued("j2", "r2").run_ids == ["j2", "r2"]  # idempotent


def test_ensure_does_not_overwrite(store: JobStore) -> None:
    new(store, "j3", queue="high")
    again = store.ensure(id="j3", job_type="fibonacci", job_class="x", queue="low", payload={}, max_retries=0)
    assert again.queue == "high" and again.payload == {"n": 1}


def test_filters_and_order(store: JobStore) -> None:
    new(store, "a", queue="high")
    new(store, "b", queue="low", job_type="slow_query")
    new(store, "c", queue="low")
    store.mark_failed("c", error="E", traceback=None)
    assert [r.id for r in store.list()] == ["c", "b", "a"]
    assert [r.id for r in store.list(queue="low")] == ["c", "b"]
    assert [r.id for r in store.list(job_type="slow_query")] == ["b"]
    assert [r.id for r in store.list(statuses=[JobStatus.FAILED])] == ["c"]
    assert [r.id for r in store.list(limit=1)] == ["c"]


def test_missing_records(store: JobStore) -> None:
    assert store.get("nope") is None
    with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
        store.require("nope")
    with pytest.raises(JobNotFoundError):
        store.mark_completed("nope", 1)


def test_status_values_are_stored(store: JobStore) -> None:
    new(store, "v")
    store.mark_waiting_retry("v", error="E", traceback="t", next_retry_at=datetime.now(UTC))
    with store.engine.connect() as connection:
        raw = connection.execute(sa.text("SELECT status FROM etl_jobs WHERE id = 'v'")).scalar_one()
    assert raw == "waiting_retry"


def test_table_lives_beside_dagsters_own(store: JobStore) -> None:
    tables = set(sa.inspect(store.engine).get_table_names())
    assert "etl_jobs" in tables
    if store.engine.dialect.name == "postgresql":
        # The module's database holds Dagster's storage too (copied from the template).
        assert {"runs", "jobs", "job_ticks", "event_logs"} <= tables
