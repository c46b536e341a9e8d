"""The job table on SQLite and PostgreSQL: lifecycle, filters, timestamps, JSON."""

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from etl_pipelines.store import SYSTEM_ACTOR, JobNotFoundError, JobStateError, JobStatus, JobStore


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

    started = store.mark_started("j1", "j1")
    assert started.status == JobStatus.STARTED and started.started_at is not None
    assert started.heartbeat_at is not None
    due = datetime.now(UTC) + timedelta(seconds=60)
    waiting = store.mark_waiting_retry("j1", error="E: x", traceback="tb", next_retry_at=due)
    assert waiting.status == JobStatus.WAITING_RETRY and waiting.heartbeat_at is None
    claimed = store.claim_retry("j1", expect=[JobStatus.WAITING_RETRY], retry_count=1)
    assert claimed.status == JobStatus.QUEUED and claimed.retry_count == 1
    again = store.mark_started("j1", "j1")
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


def test_audit_trail_records_every_change(store: JobStore) -> None:
    new(store, "h1")
    store.mark_started("h1", "h1")
    store.mark_failed("h1", error="E: broken", traceback="tb")
    store.claim_retry(
        "h1", expect=[JobStatus.FAILED], retry_count=0, actor="alice", reason="fixed", action="manual_retry"
    )
    store.mark_queued("h1", "r2")
    store.mark_started("h1", "r2")
    store.mark_failed("h1", error="E: again", traceback=None)
    store.mark_completed(
        "h1", None, expect=[JobStatus.FAILED], actor="bob", reason="done by hand", action="marked_completed"
    )
    events = store.history("h1")
    assert [(e.action, e.from_status, e.to_status) for e in events] == [
        ("queued", None, "queued"),
        ("started", "queued", "started"),
        ("failed", "started", "failed"),
        ("manual_retry", "failed", "queued"),
        ("run_queued", "queued", "queued"),
        ("started", "queued", "started"),
        ("failed", "started", "failed"),
        ("marked_completed", "failed", "completed"),
    ]
    assert [e.actor for e in events if e.actor != SYSTEM_ACTOR] == ["alice", "bob"]
    assert events[2].reason == "E: broken" and events[-1].reason == "done by hand"
    assert [e.run_id for e in events][-3:] == ["r2", "r2", "r2"]
    assert all(a.at <= b.at for a, b in itertools.pairwise(events))
    with pytest.raises(JobNotFoundError):
        store.history("nope")


def test_checked_transitions_change_nothing_when_refused(store: JobStore) -> None:
    new(store, "s1")
    store.mark_started("s1", "s1")
    before = store.require("s1")
    count = len(store.history("s1"))
    with pytest.raises(JobStateError, match="job s1 is started, not failed"):
        store.claim_retry("s1", expect=[JobStatus.FAILED], retry_count=0)
    with pytest.raises(JobStateError, match="not failed"):
        store.mark_completed("s1", None, expect=[JobStatus.FAILED], action="marked_completed")
    after = store.require("s1")
    assert after.status == before.status and after.updated_at == before.updated_at
    assert len(store.history("s1")) == count


def test_claim_is_taken_once(store: JobStore) -> None:
    """Many concurrent claimers of one due retry (due_retries sensor, retry-job): exactly one wins."""
    new(store, "c1")
    store.mark_waiting_retry("c1", error="E", traceback=None, next_retry_at=datetime.now(UTC))
    assert [r.id for r in store.due_retries(datetime.now(UTC) + timedelta(seconds=1))] == ["c1"]
    barrier = threading.Barrier(6)

    def claim() -> str:
        barrier.wait()
        try:
            store.claim_retry("c1", expect=[JobStatus.WAITING_RETRY], retry_count=1)
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
    assert store.due_retries(datetime.now(UTC) + timedelta(seconds=1)) == []


def test_transitions_check_the_run(store: JobStore) -> None:
    """An attempt starts only on the job's queued run; a re-execution takes the job only from the
    run it re-executes; recovery's claim fails if the job changed since it looked."""
    new(store, "r1")
    with pytest.raises(JobStateError, match="job r1 is queued on run r1, not queued on run other"):
        store.mark_started("r1", "other")
    store.mark_started("r1", "r1")
    store.mark_failed("r1", error="E", traceback=None)
    store.mark_queued("r1", "r2", parent_run_id="r1")
    with pytest.raises(JobStateError):  # a second re-execution of the same run
        store.mark_queued("r1", "r3", parent_run_id="r1")
    assert store.require("r1").run_ids == ["r1", "r2"]
    seen = store.require("r1")
    store.claim_recovery(seen, "lost")
    with pytest.raises(JobStateError):  # another recoverer with the same snapshot
        store.claim_recovery(seen, "lost")
    store.mark_started("r1", "r2")
    with pytest.raises(JobStateError):  # the superseded run's outcome is refused
        store.mark_completed("r1", 1, expect=[JobStatus.STARTED], expect_run_id="r1")
    with pytest.raises(JobStateError):
        store.mark_cancelled("r1", "r1")
    assert store.mark_cancelled("r1", "r2").status == JobStatus.CANCELLED


def test_heartbeat_only_for_the_running_attempt(store: JobStore) -> None:
    new(store, "b1")
    assert not store.heartbeat("b1", "b1")  # queued: nothing runs
    first = store.mark_started("b1", "b1").heartbeat_at
    assert store.heartbeat("b1", "b1")
    assert store.require("b1").heartbeat_at >= first
    assert not store.heartbeat("b1", "other-run")
    assert len(store.history("b1")) == 2  # beats are not audit events
