"""The job table's writes through a lost connection, and what they store (no services: SQLite).

The same writes against PostgreSQL with the connection cut mid-write are in test_outage.py.
"""

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from etl_pipelines.lifecycle import NewJob, RetrySchedule, events
from etl_pipelines.lifecycle.bounds import ERROR_LIMIT_BYTES, TRACEBACK_LIMIT_BYTES
from etl_pipelines.store import JobStateError, JobStatus, JobStore
from etl_pipelines.store.resilience import WritePolicy, is_transient, retry_write


def _lost() -> sa.exc.DBAPIError:
    return sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))


def test_default_policy_outlasts_a_45_second_outage() -> None:
    delays = list(WritePolicy().delays())
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6] and max(delays) == 10.0
    assert sum(delays) <= 120 and sum(delays) > 45
    assert list(WritePolicy(deadline=0).delays()) == []


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused")), True),
        (sa.exc.InterfaceError("COMMIT", {}, Exception("connection already closed")), True),
        (sa.exc.DBAPIError("UPDATE", {}, Exception("ssl eof"), connection_invalidated=True), True),
        (sa.exc.DBAPIError("UPDATE", {}, Exception("odd"), connection_invalidated=False), False),
        (sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (sa.exc.ProgrammingError("SELECT", {}, Exception("no such column")), False),
        (JobStateError("job j is completed, not started"), False),
        (ValueError("x"), False),
    ],
)
def test_which_errors_are_tried_again(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_retry_write_tries_again_until_it_lands() -> None:
    clock, tries = Clock(), []

    def write(retrying: bool) -> str:
        tries.append(retrying)
        if len(tries) < 4:
            raise _lost()
        return "done"

    assert retry_write(write, WritePolicy(), sleep=clock.sleep, clock=lambda: clock.now) == "done"
    assert tries == [False, True, True, True] and clock.slept == [0.2, 0.4, 0.8]


def test_retry_write_gives_up_at_the_deadline() -> None:
    clock = Clock()

    def write(_retrying: bool) -> None:
        clock.now += 1.0  # each try takes a second (a connect timing out)
        raise _lost()

    with pytest.raises(sa.exc.OperationalError):
        retry_write(write, WritePolicy(deadline=20), sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now <= 20 + 1 and sum(clock.slept) < 20


@pytest.mark.parametrize(
    "error", [JobStateError("refused"), sa.exc.IntegrityError("INSERT", {}, Exception("dup"))]
)
def test_retry_write_never_repeats_a_refusal(error: Exception) -> None:
    tries = []

    def write(retrying: bool) -> None:
        tries.append(retrying)
        raise error

    with pytest.raises(type(error)):
        retry_write(write, WritePolicy(), sleep=lambda _: None)
    assert tries == [False]


# -- a commit whose reply is lost, on SQLite -------------------------------------------------------


class LoseReplies:
    """Sessions of `store` whose next `count` commits land and then raise as if the connection died
    before the reply arrived."""

    def __init__(self, store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        opened = store._session

        def session() -> Session:
            made = opened()

            @sa.event.listens_for(made, "after_commit")
            def lose(_session: Session) -> None:
                if self.count:
                    self.count -= 1
                    raise _lost()

            return made

        monkeypatch.setattr(store, "_session", session)


@pytest.fixture
def store(tmp_path) -> Iterator[JobStore]:
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}", retry_seconds=5)
    yield store
    store.engine.dispose()


def _job(job_id: str) -> NewJob:
    return NewJob(
        id=job_id,
        job_type="fibonacci",
        job_class="x.Fibonacci",
        queue="low",
        payload={"n": 1},
        schedule=RetrySchedule.explicit(()),
    )


def test_a_write_whose_reply_was_lost_lands_once(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write's first try commits and its reply is lost: the retry finds its own write
    (not refused by the change it made itself), and the audit trail has it once."""
    lose = LoseReplies(store, monkeypatch)
    lose.count = 1
    record = events.bootstrap(store, _job("j1"), "r1", must_be_new=True)  # not "already exists"
    assert record.status == JobStatus.QUEUED
    lose.count = 1
    assert events.started(store, "j1", "r1").status == JobStatus.STARTED
    lose.count = 1
    assert store.heartbeat("j1", "r1")
    lose.count = 1
    store.record_event("j1", "note", reason="a note")
    lose.count = 1
    done = events.completed(store, "j1", "r1", {"rows": 3})
    assert done.status == JobStatus.COMPLETED and done.result == {"rows": 3}
    assert lose.count == 0
    assert [e.action for e in store.history("j1")] == ["queued", "started", "note", "completed"]

    lose.count = 1
    store.join_line("r1", "j1", "public.t", priority=0)
    assert [c.run_id for c in store.claims("public.t")] == ["r1"]
    lose.count = 1
    left = store.leave_line("r1")  # the caller still learns which table to hand on
    assert left is not None and left.target == "public.t" and store.claims("public.t") == []


def test_without_retries_a_lost_reply_fails_the_write(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a completed attempt met before: its outcome write failed though it had landed."""
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}", retry_seconds=0)
    events.bootstrap(store, _job("j1"), "r1")
    events.started(store, "j1", "r1")
    LoseReplies(store, monkeypatch).count = 1
    with pytest.raises(sa.exc.OperationalError):
        events.completed(store, "j1", "r1", {"rows": 3})
    store.engine.dispose()


def test_a_retry_after_a_write_that_did_not_land_writes_it(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events.bootstrap(store, _job("j1"), "r1")
    events.started(store, "j1", "r1")
    failures = [_lost()]
    transition = store._transition

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()  # the connection died before anything was written
        return transition(*args, **kwargs)

    monkeypatch.setattr(store, "_transition", flaky)
    assert events.completed(store, "j1", "r1", 1).status == JobStatus.COMPLETED
    assert [e.action for e in store.history("j1")] == ["queued", "started", "completed"]
    with pytest.raises(JobStateError):  # a different write is still refused
        events.completed(store, "j1", "r1", 2)


# -- what the job table keeps -----------------------------------------------------------------------


def test_every_write_bounds_and_scrubs_what_it_stores() -> None:
    store = JobStore.in_memory()
    store.max_result_bytes = 1000
    events.bootstrap(store, _job("j1"), "r1")
    events.started(store, "j1", "r1")
    done = events.completed(store, "j1", "r1", {"rows": ["x" * 100] * 100})
    assert done.result["truncated"] is True and store.require("j1").result == done.result

    secret = "[parameters: {'password': 's3cr3t'}]"
    events.bootstrap(store, _job("j2"), "r2")
    events.started(store, "j2", "r2")
    failed = events.attempt_failed(
        store,
        store.require("j2"),
        "r2",
        error="IntegrityError: boom\n" + secret + "x" * 10_000,
        traceback="Traceback\n" + secret + "y" * 100_000,
        schedule=RetrySchedule.explicit(()),
    )
    stored = store.require("j2")
    assert failed.error == stored.error and stored.error is not None and stored.traceback is not None
    assert "s3cr3t" not in stored.error and "s3cr3t" not in stored.traceback
    assert len(stored.error.encode()) <= ERROR_LIMIT_BYTES
    assert len(stored.traceback.encode()) <= TRACEBACK_LIMIT_BYTES
    reasons = [e.reason or "" for e in store.history("j2")]
    assert all("s3cr3t" not in r and len(r.encode()) <= ERROR_LIMIT_BYTES for r in reasons)
    store.record_event("j2", "note", reason=secret)
    assert store.history("j2")[-1].reason == "[parameters hidden]"


def test_history_and_list_page() -> None:
    store = JobStore.in_memory()
    for n in range(5):
        events.bootstrap(store, _job(f"j{n}"), f"r{n}")
    assert [r.id for r in store.list(limit=2)] == ["j4", "j3"]
    assert [r.id for r in store.list(limit=2, offset=2)] == ["j2", "j1"]
    assert [r.id for r in store.list(limit=2, offset=4)] == ["j0"]
    assert store.count() == 5 and store.count(statuses=[JobStatus.FAILED]) == 0
    for n in range(3):
        store.record_event("j0", f"note{n}")
    assert store.count_history("j0") == 4
    assert [e.action for e in store.history("j0", limit=2, offset=1)] == ["note0", "note1"]
    assert len(store.history("j0")) == 4
