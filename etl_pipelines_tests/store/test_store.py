"""The job table on SQLite and PostgreSQL: lifecycle, filters, timestamps, JSON."""

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from etl_pipelines.lifecycle import NewJob, RetrySchedule, events
from etl_pipelines.store import JobNotFoundError, JobStateError, JobStatus, JobStore


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        yield JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    else:
        url = request.getfixturevalue("pg_url")
        store = JobStore(url)
        with store.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM etl_jobs"))
            connection.execute(sa.text("DELETE FROM etl_job_events"))
            connection.execute(sa.text("DELETE FROM etl_table_claims"))
        yield store


def new(store: JobStore, job_id: str, **fields):
    job = NewJob(
        id=job_id,
        job_type=fields.get("job_type", "fibonacci"),
        job_class="x.Fibonacci",
        queue=fields.get("queue", "low"),
        payload={"n": 1},
        schedule=RetrySchedule.explicit((60.0, 300.0, 900.0)),
    )
    return events.bootstrap(store, job, job_id)


def fail(store: JobStore, job_id: str, retries_left: bool = False):
    events.started(store, job_id, job_id)
    schedule = RetrySchedule.explicit((60.0,) if retries_left else ())
    return events.attempt_failed(
        store, store.require(job_id), job_id, error="E", traceback=None, schedule=schedule
    )


def test_records_keep_types_and_timestamps(store: JobStore) -> None:
    """JSON results, aware UTC timestamps and the audit trail survive the round trip on each backend
    (the rules themselves are in etl_pipelines_tests/lifecycle, on SQLite in memory)."""
    record = new(store, "j1")
    assert record.status == JobStatus.QUEUED and record.run_ids == ["j1"]
    events.started(store, "j1", "j1")
    done = events.completed(store, "j1", "j1", {"groups": [{"a": 1.5}], "unicode": "é"})
    fetched = store.require("j1")
    assert fetched.result == {"groups": [{"a": 1.5}], "unicode": "é"}
    assert fetched.finished_at == done.finished_at and fetched.finished_at.tzinfo == UTC
    assert fetched.created_at <= fetched.started_at <= fetched.finished_at <= fetched.updated_at
    trail = store.history("j1")
    assert [e.action for e in trail] == ["queued", "started", "completed"]
    assert all(a.at <= b.at for a, b in itertools.pairwise(trail))
    with pytest.raises(JobNotFoundError):
        store.history("nope")


def test_filters_and_order(store: JobStore) -> None:
    new(store, "a", queue="high")
    new(store, "b", queue="low", job_type="slow_query")
    new(store, "c", queue="low")
    fail(store, "c")
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
        events.mark_completed(store, "nope", actor="bob", reason="x")


def test_status_values_are_stored(store: JobStore) -> None:
    new(store, "v")
    fail(store, "v", retries_left=True)
    with store.engine.connect() as connection:
        raw = connection.execute(sa.text("SELECT status FROM etl_jobs WHERE id = 'v'")).scalar_one()
    assert raw == "waiting_retry"


def test_table_lives_beside_dagsters_own(store: JobStore) -> None:
    tables = set(sa.inspect(store.engine).get_table_names())
    assert "etl_jobs" in tables
    if store.engine.dialect.name == "postgresql":
        # The module's database holds Dagster's storage too (copied from the template).
        assert {"runs", "jobs", "job_ticks", "event_logs"} <= tables


def test_claim_is_taken_once(store: JobStore) -> None:
    """Many concurrent claimers of one due retry (due_retries sensor, retry-job): exactly one wins,
    on SQLite (a file, in the fast tier) and on PostgreSQL's row locks."""
    new(store, "c1")
    seen = fail(store, "c1", retries_left=True)
    assert [r.id for r in store.due_retries(datetime.now(UTC) + timedelta(seconds=61))] == ["c1"]
    barrier = threading.Barrier(6)

    def claim() -> str:
        barrier.wait()
        try:
            events.claim_due_retry(store, seen)
        except JobStateError:
            return "refused"
        except sa.exc.OperationalError as exc:  # SQLite: "database is locked", nothing written
            assert "locked" in str(exc)
            return "refused"
        return "won"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: claim(), range(6)))
    assert outcomes.count("won") == 1, outcomes
    assert [e.action for e in store.history("c1")].count("retry") == 1
    assert store.due_retries(datetime.now(UTC) + timedelta(seconds=61)) == []


def test_two_runs_submitted_for_one_table_at_once_start_one(store: JobStore) -> None:
    """Submissions racing for one table (dispatch, GraphQL, a hand-over): exactly one holds it,
    on SQLite and on PostgreSQL (the partial unique index refuses a second holder)."""
    from etl_pipelines.lifecycle import admission

    for round_ in range(5):
        target = f"public.t{round_}"
        barrier = threading.Barrier(4)

        def enter(number: int, target: str = target, barrier: threading.Barrier = barrier) -> str | None:
            barrier.wait()
            while True:
                try:
                    return admission.enter(store, f"{target}-r{number}", f"j{number}", target, priority=0)
                except sa.exc.OperationalError as exc:  # SQLite: "database is locked"; try again
                    assert "locked" in str(exc)

        with ThreadPoolExecutor(4) as pool:
            started = [run for run in pool.map(enter, range(4)) if run is not None]
        assert len(started) == 1, started
        assert [c.run_id for c in store.claims(target) if c.holding] == started
