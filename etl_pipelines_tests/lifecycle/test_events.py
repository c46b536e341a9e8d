"""The transition table, every event against every status, on an in-memory job table (no services)."""

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etl_pipelines.errors import JobInputError
from etl_pipelines.lifecycle import TRANSITIONS, ForeignJob, NewJob, Refused, RetrySchedule, events
from etl_pipelines.store import SYSTEM_ACTOR, JobNotFoundError, JobRecord, JobStateError, JobStatus, JobStore

SCHEDULE = RetrySchedule.explicit((60.0, 300.0))
QUEUES = ("high", "medium", "low", "default")


@pytest.fixture
def store() -> JobStore:
    return JobStore.in_memory()


def new(store: JobStore, job_id: str = "j1", **fields: Any) -> JobRecord:
    job = NewJob(
        id=job_id,
        job_type=fields.pop("job_type", "fibonacci"),
        job_class="etl_pipelines.jobs.fibonacci.Fibonacci",
        queue=fields.pop("queue", "low"),
        payload=fields.pop("payload", {"n": 1}),
        schedule=fields.pop("schedule", SCHEDULE),
    )
    return events.bootstrap(store, job, fields.pop("run_id", job_id))


def put(store: JobStore, job_id: str, status: JobStatus, **values: Any) -> JobRecord:
    """Place a job in `status` directly (test set-up only: no rule is checked)."""
    return store.transition(job_id, "test_setup", status=status, **values)


# One way to make each event happen to job j1, acting for its run r1 where the row needs a run.
EVENTS: dict[str, Callable[[JobStore], JobRecord]] = {
    "started": lambda s: events.started(s, "j1", "r1"),
    "completed": lambda s: events.completed(s, "j1", "r1", {"ok": True}),
    "attempt_failed": lambda s: events.attempt_failed(
        s, s.require("j1"), "r1", error="E: x", traceback="tb", schedule=SCHEDULE
    ),
    "run_failed": lambda s: events.attempt_failed(
        s, s.require("j1"), "r1", error="E: x", traceback=None, schedule=SCHEDULE, inside_op=False
    ),
    "cancelled": lambda s: events.cancelled(s, "j1", "r1"),
    "retry_cancelled": lambda s: events.retry_cancelled(
        s, s.require("j1"), actor="carol", reason="not needed"
    ),
    "rejected": lambda s: events.admit_run(s, _job(queue="urgent"), "r1", parent_run_id=None, queues=QUEUES),
    "run_queued": lambda s: events.run_queued(s, "j1", "r2", parent_run_id=None),
    "retry": lambda s: events.claim_due_retry(s, s.require("j1")),
    "retry_deferred": lambda s: events.retry_not_queued(s, s.require("j1"), "E: down"),
    "manual_retry": lambda s: events.claim_manual_retry(s, "j1", actor="alice", reason="fixed"),
    "retry_failed": lambda s: events.retry_refused(s, s.require("j1"), "E: down", actor="alice"),
    "marked_completed": lambda s: events.mark_completed(s, "j1", actor="bob", reason="done by hand"),
    "recovering": lambda s: events.claim_recovery(s, s.require("j1"), "lost"),
}


def _job(**fields: Any) -> NewJob:
    values: dict[str, Any] = dict(
        id="j1", job_type="fibonacci", job_class="x", queue="low", payload={"n": 1}, schedule=SCHEDULE
    )
    values.update(fields)
    return NewJob(**values)


def test_every_event_of_the_table_is_exercised() -> None:
    assert set(EVENTS) == set(TRANSITIONS)


@pytest.mark.parametrize(("event", "status"), list(itertools.product(TRANSITIONS, JobStatus)))
def test_each_event_happens_only_from_its_statuses(store: JobStore, event: str, status: JobStatus) -> None:
    new(store, run_id="r1")
    now = datetime.now(UTC)  # every timestamp set, whatever the status: events must clear them
    put(store, "j1", status, next_retry_at=now, heartbeat_at=now, finished_at=now)
    before = store.require("j1")
    trail = len(store.history("j1"))
    row = TRANSITIONS[event]
    if status in row.sources:
        after = EVENTS[event](store) if event != "rejected" else _rejected(store)
        if row.target is not None:
            assert after.status == row.target
        if event != "recovering":  # a claim changes no status; every other event keeps these true
            assert (after.heartbeat_at is not None) == (after.status == JobStatus.STARTED)
            assert (after.next_retry_at is not None) == (after.status == JobStatus.WAITING_RETRY)
            assert (after.finished_at is not None) == after.status.is_final
        assert len(store.history("j1")) == trail + 1
        return
    with pytest.raises((JobStateError, Refused)):
        EVENTS[event](store)
    after = store.require("j1")
    assert (after.status, after.updated_at, after.run_ids) == (
        before.status,
        before.updated_at,
        before.run_ids,
    )
    assert len(store.history("j1")) == trail  # a refused event leaves no audit row


def _rejected(store: JobStore) -> JobRecord:
    with pytest.raises(Refused, match="unknown queue 'urgent'"):
        EVENTS["rejected"](store)
    return store.require("j1")


@pytest.mark.parametrize("event", [e for e, row in TRANSITIONS.items() if row.on_run and e != "recovering"])
def test_events_of_a_run_refuse_another_run(store: JobStore, event: str) -> None:
    """An outcome from a superseded run is refused, whatever status the job is in."""
    new(store, run_id="r0")  # the job is on run r0; the events act for r1
    for status in TRANSITIONS[event].sources:
        put(store, "j1", status)
        with pytest.raises((JobStateError, Refused)):
            EVENTS[event](store)
        assert store.require("j1").status == status


def test_a_whole_life_and_its_audit_trail(store: JobStore) -> None:
    new(store, "h1")
    events.started(store, "h1", "h1")
    schedule = RetrySchedule.explicit(())
    events.attempt_failed(
        store, store.require("h1"), "h1", error="E: broken", traceback="tb", schedule=schedule
    )
    events.claim_manual_retry(store, "h1", actor="alice", reason="fixed")
    events.run_queued(store, "h1", "r2", parent_run_id="h1")
    events.started(store, "h1", "r2")
    events.attempt_failed(
        store, store.require("h1"), "r2", error="E: again", traceback=None, schedule=schedule
    )
    events.mark_completed(store, "h1", actor="bob", reason="done by hand")
    trail = store.history("h1")
    assert [(e.action, e.from_status, e.to_status) for e in trail] == [
        ("queued", None, "queued"),
        ("started", "queued", "started"),
        ("failed", "started", "failed"),
        ("manual_retry", "failed", "queued"),
        ("run_queued", "queued", "queued"),
        ("started", "queued", "started"),
        ("failed", "started", "failed"),
        ("marked_completed", "failed", "completed"),
    ]
    assert [e.actor for e in trail if e.actor != SYSTEM_ACTOR] == ["alice", "bob"]
    assert trail[2].reason == "E: broken" and trail[-1].reason == "done by hand"
    assert [e.run_id for e in trail][-3:] == ["r2", "r2", "r2"]
    record = store.require("h1")
    assert record.result == {"resolved_manually": "done by hand"} and record.run_ids == ["h1", "r2"]
    assert record.created_at <= record.started_at <= record.finished_at <= record.updated_at


def test_retries_count_retries_performed(store: JobStore) -> None:
    """Three retries: retry_count is 3 after the last failure, not 4; waits follow the schedule."""
    schedule = RetrySchedule.explicit((1.0, 5.0, 15.0))
    new(store, schedule=schedule)
    waits = []
    for attempt in range(4):
        events.started(store, "j1", "j1")
        after = events.attempt_failed(
            store, store.require("j1"), "j1", error="E", traceback=None, schedule=schedule
        )
        assert after.retry_count == attempt
        if attempt == 3:
            assert after.status == JobStatus.FAILED and after.next_retry_at is None
            break
        assert after.status == JobStatus.WAITING_RETRY
        waits.append(round((after.next_retry_at - after.updated_at).total_seconds()))
        events.claim_due_retry(store, after)
    assert waits == [1, 5, 15]
    assert store.require("j1").retry_count == 3
    assert store.require("j1").max_retries == 3


def test_non_retryable_failures_fail_at_once(store: JobStore) -> None:
    new(store)
    events.started(store, "j1", "j1")
    after = events.attempt_failed(
        store,
        store.require("j1"),
        "j1",
        error="JobInputError: bad",
        traceback="tb",
        schedule=SCHEDULE,
        retryable=False,
    )
    assert after.status == JobStatus.FAILED and after.retry_count == 0 and after.traceback == "tb"


def test_a_deferred_retry_keeps_its_place_in_the_schedule(store: JobStore) -> None:
    """A claimed retry that could not be queued waits again with the count it had (no attempt lost)."""
    new(store)
    events.started(store, "j1", "j1")
    seen = events.attempt_failed(
        store, store.require("j1"), "j1", error="E: first", traceback=None, schedule=SCHEDULE
    )
    assert events.claim_due_retry(store, seen).retry_count == 1
    back = events.retry_not_queued(store, seen, "DagsterError: down")
    assert back.status == JobStatus.WAITING_RETRY and back.retry_count == 0 and back.error == "E: first"
    assert abs(back.next_retry_at - back.updated_at - events.REQUEUE_DELAY) < timedelta(seconds=1)


def test_a_manual_retry_that_cannot_be_queued_leaves_the_job_failed(store: JobStore) -> None:
    new(store)
    events.started(store, "j1", "j1")
    schedule = RetrySchedule.explicit(())
    before = events.attempt_failed(
        store, store.require("j1"), "j1", error="E: x", traceback="tb", schedule=schedule
    )
    events.claim_manual_retry(store, "j1", actor="alice", reason=None)
    after = events.retry_refused(store, before, "DagsterError: down", actor="alice")
    assert (after.status, after.error, after.traceback) == (JobStatus.FAILED, "E: x", "tb")


def test_marking_completed_needs_a_reason(store: JobStore) -> None:
    new(store)
    put(store, "j1", JobStatus.FAILED)
    with pytest.raises(JobInputError, match="needs a reason"):
        events.mark_completed(store, "j1", actor="bob", reason="  ")
    assert store.require("j1").status == JobStatus.FAILED


def test_missing_records_are_named(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError, match="no job with id 'nope'"):
        events.started(store, "nope", "nope")
    with pytest.raises(JobNotFoundError):
        events.mark_completed(store, "nope", actor="bob", reason="x")


def test_bootstrap_makes_one_record_whoever_asks(store: JobStore) -> None:
    first = new(store, "b1", queue="high")
    again = events.bootstrap(store, _job(id="b1", queue="low", payload={}), "other")
    assert (again.queue, again.payload, again.run_ids) == ("high", {"n": 1}, ["b1"])
    assert first.max_retries == 2
    with pytest.raises(JobStateError, match="already exists"):
        events.bootstrap(store, _job(id="b1"), "b1", must_be_new=True)
    assert [e.action for e in store.history("b1")] == ["queued"]


def test_admission(store: JobStore) -> None:
    """A run from anywhere gets a record; another type's job id, an unknown queue, a second
    re-execution of one run and a re-execution while an attempt runs are refused."""
    record = events.admit_run(store, _job(id="a1"), "a1", parent_run_id=None, queues=QUEUES)
    assert record.status == JobStatus.QUEUED and record.run_ids == ["a1"]
    with pytest.raises(Refused, match="names a fibonacci job, not slow_query"):
        events.admit_run(store, _job(id="a1", job_type="slow_query"), "x", parent_run_id=None, queues=QUEUES)
    events.started(store, "a1", "a1")
    with pytest.raises(Refused, match="job a1 is started"):
        events.admit_run(store, _job(id="a1"), "a2", parent_run_id="a1", queues=QUEUES)
    events.completed(store, "a1", "a1", 1)
    done = store.require("a1")
    with pytest.raises(Refused, match="other parameters"):  # a re-execution runs the job as it was
        events.admit_run(store, _job(id="a1", payload={"n": 2}), "a2", parent_run_id="a1", queues=QUEUES)
    assert store.require("a1").to_dict() == done.to_dict()
    same = events.admit_run(  # parameters compared as the job type reads them (defaults filled)
        store, _job(id="a1", payload={}), "a2", parent_run_id="a1", queues=QUEUES, same_params=lambda p: True
    )
    assert same.run_ids == ["a1", "a2"] and same.result is None
    store.delete("a1")
    events.admit_run(store, _job(id="a1"), "a1", parent_run_id=None, queues=QUEUES)
    events.started(store, "a1", "a1")
    events.completed(store, "a1", "a1", 1)
    again = events.admit_run(store, _job(id="a1"), "a2", parent_run_id="a1", queues=QUEUES)
    assert again.run_ids == ["a1", "a2"] and again.payload == {"n": 1} and again.result is None
    with pytest.raises(Refused):  # a second re-execution of the same run
        events.admit_run(store, _job(id="a1"), "a3", parent_run_id="a1", queues=QUEUES)
    assert events.admit_run(store, _job(id="a1"), "a2", parent_run_id="a1", queues=QUEUES).run_ids == [
        "a1",
        "a2",
    ]  # the same run admitted twice (a retried submission) changes nothing
    # An unknown queue: a new job's record says why; an existing job's record is left alone.
    with pytest.raises(Refused, match="unknown queue"):
        events.admit_run(store, _job(id="q1", queue="urgent"), "q1", parent_run_id=None, queues=QUEUES)
    assert store.require("q1").status == JobStatus.FAILED
    assert store.require("q1").error.startswith("UnknownQueueError: unknown queue 'urgent'")
    with pytest.raises(Refused):
        events.admit_run(store, _job(id="a1", queue="urgent"), "a9", parent_run_id="a2", queues=QUEUES)
    assert store.require("a1").status == JobStatus.QUEUED and store.require("a1").run_id == "a2"


def test_a_finished_job_run_again_gets_its_whole_schedule(store: JobStore) -> None:
    new(store)
    put(store, "j1", JobStatus.FAILED, retry_count=2, error="E", finished_at=datetime.now(UTC))
    again = events.run_queued(store, "j1", "r2", parent_run_id="j1")
    assert (again.retry_count, again.error, again.finished_at) == (0, None, None)


def test_recovery_claims_what_it_saw(store: JobStore) -> None:
    seen = new(store)
    events.claim_recovery(store, seen, "lost")
    with pytest.raises(JobStateError):  # another recoverer with the same snapshot
        events.claim_recovery(store, seen, "lost")
    fresh = store.require("j1")
    events.started(store, "j1", "j1")  # the worker got there after all
    with pytest.raises(JobStateError):
        events.claim_recovery(store, fresh, "lost")


def test_superseded_attempt_outcomes_are_refused(store: JobStore) -> None:
    """Recovery judged the first attempt lost and its retry runs: the old attempt's late outcome
    (success or failure) changes nothing."""
    new(store, run_id="r1")
    events.started(store, "j1", "r1")
    lost = events.attempt_failed(
        store,
        store.require("j1"),
        "r1",
        error="WorkerLost",
        traceback=None,
        schedule=SCHEDULE,
        inside_op=False,
    )
    events.claim_due_retry(store, lost)  # queued again, still on r1 until its run is submitted
    with pytest.raises(JobStateError):
        events.completed(store, "j1", "r1", "late")
    with pytest.raises(JobStateError):
        events.attempt_failed(
            store, store.require("j1"), "r1", error="late", traceback=None, schedule=SCHEDULE
        )
    events.run_queued(store, "j1", "r2", parent_run_id="r1")
    events.started(store, "j1", "r2")
    with pytest.raises(JobStateError):
        events.cancelled(store, "j1", "r1")
    assert events.completed(store, "j1", "r2", "ok").result == "ok"


def test_heartbeats_only_for_the_running_attempt(store: JobStore) -> None:
    new(store)
    assert not store.heartbeat("j1", "j1")  # queued: nothing runs
    first = events.started(store, "j1", "j1").heartbeat_at
    assert store.heartbeat("j1", "j1") and store.require("j1").heartbeat_at >= first
    assert not store.heartbeat("j1", "other-run")
    assert len(store.history("j1")) == 2  # beats are not audit events


def test_a_failure_seen_before_a_retry_was_claimed_is_not_charged_to_it(store: JobStore) -> None:
    """The job_failures sensor read the job, then recovery recorded the failure and the retry was
    claimed: the sensor's late write of the same failure is refused."""
    new(store, run_id="r1")
    events.started(store, "j1", "r1")
    stale = store.require("j1")
    lost = events.attempt_failed(
        store, stale, "r1", error="WorkerLost", traceback=None, schedule=SCHEDULE, inside_op=False
    )
    events.claim_due_retry(store, lost)
    with pytest.raises(JobStateError):
        events.attempt_failed(
            store, stale, "r1", error="RunFailure", traceback=None, schedule=SCHEDULE, inside_op=False
        )
    with pytest.raises(JobStateError):  # nor is a due retry claimed twice from one snapshot
        events.claim_due_retry(store, lost)
    record = store.require("j1")
    assert (record.status, record.retry_count) == (JobStatus.QUEUED, 1)
    assert [e.action for e in store.history("j1")] == ["queued", "started", "waiting_retry", "retry"]


def test_a_heartbeat_is_not_a_change(store: JobStore) -> None:
    """Recovery's grace and the failure guards read updated_at: a beat must leave it alone."""
    started = events.started(store, new(store).id, "j1")
    assert store.heartbeat("j1", "j1")
    assert store.require("j1").updated_at == started.updated_at
    events.attempt_failed(store, started, "j1", error="E", traceback=None, schedule=SCHEDULE)


def test_a_reexecution_on_an_unknown_queue_leaves_the_job_alone(store: JobStore) -> None:
    """The job's run is still queued: a refused re-execution of it (a bad etl/queue tag) must not
    fail the job; the refusal is on the new run."""
    new(store, queue="low", run_id="r1")
    with pytest.raises(Refused, match="unknown queue 'urgent'"):
        events.admit_run(store, _job(queue="urgent"), "r2", parent_run_id="r1", queues=QUEUES)
    record = store.require("j1")
    assert (record.status, record.run_ids, record.error) == (JobStatus.QUEUED, ["r1"], None)


def test_a_run_failure_concerns_the_job_only_while_it_is_on_that_run(store: JobStore) -> None:
    record = new(store, run_id="r1")
    ended = datetime.now(UTC).timestamp()
    assert events.run_failure_applies(record, "r1", ended)  # launch failed before the op
    assert not events.run_failure_applies(record, "r0", ended)  # another run's failure
    assert not events.run_failure_applies(None, "r1", ended)
    queued_again = put(store, "j1", JobStatus.QUEUED, queued_at=datetime.now(UTC) + timedelta(seconds=1))
    assert not events.run_failure_applies(queued_again, "r1", ended)  # a retry claimed after it ended
    assert not events.run_failure_applies(put(store, "j1", JobStatus.WAITING_RETRY), "r1", ended)


def test_a_retry_claimed_after_the_operator_looked_is_not_cancelled(store: JobStore) -> None:
    """`etl-jobs cancel` of a waiting_retry job races the due retry's claim: whichever writes first
    wins; the job never ends up cancelled with its retry run queued."""
    new(store, run_id="r1")
    events.started(store, "j1", "r1")
    seen = events.attempt_failed(
        store, store.require("j1"), "r1", error="E: x", traceback=None, schedule=SCHEDULE
    )
    events.claim_due_retry(store, seen)
    with pytest.raises(JobStateError):
        events.retry_cancelled(store, seen, actor="carol", reason=None)
    assert store.require("j1").status == JobStatus.QUEUED


def _snapshot(store: JobStore, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole record and its whole history, to compare byte for byte."""
    return store.require(job_id).to_dict(), [e.to_dict() for e in store.history(job_id)]


def _completed(store: JobStore, job_id: str = "v1") -> JobRecord:
    new(store, job_id)
    events.started(store, job_id, job_id)
    return events.completed(store, job_id, job_id, 55)


@pytest.mark.parametrize(
    ("queue", "problem"),
    [("low", None), ("urgent", None), ("low", "JobInputError: fibonacci: n: too big"), ("urgent", "E: x")],
)
def test_a_forged_job_id_never_touches_the_job_it_names(
    store: JobStore, queue: str, problem: str | None
) -> None:
    """A fresh launch (no parent) tagged with another job's id, or a re-execution of a run that is
    not the job's current one, is refused before anything is written, whatever else it carries."""
    _completed(store, "v1")
    before = _snapshot(store, "v1")
    forged = _job(id="v1", queue=queue, payload={"n": 2})
    with pytest.raises(ForeignJob, match="names an existing job"):
        events.admit_run(store, forged, "x1", parent_run_id=None, queues=QUEUES, problem=problem)
    with pytest.raises(Refused, match="is on run v1"):
        events.admit_run(store, forged, "x2", parent_run_id="x1", queues=QUEUES, problem=problem)
    assert _snapshot(store, "v1") == before
    # A job queued on its own run is no easier to take.
    new(store, "v2")
    before = _snapshot(store, "v2")
    with pytest.raises(ForeignJob, match="names an existing job"):
        events.admit_run(store, _job(id="v2", queue=queue), "x3", parent_run_id=None, queues=QUEUES)
    assert _snapshot(store, "v2") == before


@pytest.mark.parametrize("queue", ["low", "urgent"])
def test_a_fresh_launch_naming_a_job_that_does_not_exist_is_refused(store: JobStore, queue: str) -> None:
    """A new job's id is its first run's id: a fresh launch tagged with any other id makes nothing."""
    with pytest.raises(ForeignJob, match="names no job"):
        events.admit_run(store, _job(id="nobody", queue=queue), "x1", parent_run_id=None, queues=QUEUES)
    assert store.get("nobody") is None and store.get("x1") is None
    assert store.list(limit=100) == []


def test_a_job_s_own_runs_still_take_it(store: JobStore) -> None:
    """Due and manual retries and UI re-executions re-execute the job's current run; recovery
    submits a run the job already has: all of them are admitted."""
    record = events.admit_run(store, _job(id="o1"), "o1", parent_run_id=None, queues=QUEUES)
    assert record.run_ids == ["o1"]
    # Recovery submits the job's run again: nothing changes.
    before = _snapshot(store, "o1")
    assert events.admit_run(store, _job(id="o1"), "o1", parent_run_id=None, queues=QUEUES).run_ids == ["o1"]
    assert _snapshot(store, "o1") == before
    events.started(store, "o1", "o1")
    seen = events.attempt_failed(
        store, store.require("o1"), "o1", error="E", traceback=None, schedule=SCHEDULE
    )
    events.claim_due_retry(store, seen)  # framework/retries: then a re-execution of record.run_id
    retried = events.admit_run(store, _job(id="o1"), "o2", parent_run_id="o1", queues=QUEUES)
    assert (retried.status, retried.run_ids, retried.retry_count) == (JobStatus.QUEUED, ["o1", "o2"], 1)
    events.started(store, "o1", "o2")
    events.completed(store, "o1", "o2", 1)
    again = events.admit_run(store, _job(id="o1"), "o3", parent_run_id="o2", queues=QUEUES)  # the UI
    assert again.run_ids == ["o1", "o2", "o3"] and again.status == JobStatus.QUEUED
    # A re-execution of a run whose job has no record (made before the job table, say) makes one.
    orphan = events.admit_run(store, _job(id="r0"), "r1", parent_run_id="r0", queues=QUEUES)
    assert (orphan.id, orphan.run_ids) == ("r0", ["r1"])


def test_a_new_job_with_invalid_parameters_fails_at_once(store: JobStore) -> None:
    """Its record is made so it can be listed, and failed with the reason: no retries, no attempt."""
    problem = "JobInputError: fibonacci: n: Input should be less than or equal to 20000 (got 20001)"
    with pytest.raises(Refused, match="less than or equal to 20000"):
        events.admit_run(
            store,
            _job(id="p1", payload={"n": 20001}),
            "p1",
            parent_run_id=None,
            queues=QUEUES,
            problem=problem,
        )
    record = store.require("p1")
    assert (record.status, record.error, record.retry_count) == (JobStatus.FAILED, problem, 0)
    assert record.started_at is None and record.next_retry_at is None and record.payload == {"n": 20001}
    assert [(e.action, e.to_status, e.reason) for e in store.history("p1")] == [
        ("queued", "queued", None),
        ("rejected", "failed", problem),
    ]
    # A queue problem is named before a parameter problem.
    with pytest.raises(Refused, match="unknown queue 'urgent'"):
        events.admit_run(
            store, _job(id="p2", queue="urgent"), "p2", parent_run_id=None, queues=QUEUES, problem=problem
        )
    assert store.require("p2").error.startswith("UnknownQueueError: unknown queue 'urgent'")


def test_a_reexecution_with_invalid_parameters_leaves_the_job_alone(store: JobStore) -> None:
    """A re-execution with bad parameters (edited in the launchpad, or a check that changed since)
    is refused; the job it re-executes stays as it was (a claimed retry is put back by retries.py)."""
    _completed(store, "e1")
    before = _snapshot(store, "e1")
    with pytest.raises(Refused, match="JobInputError: bad"):
        events.admit_run(
            store, _job(id="e1"), "e2", parent_run_id="e1", queues=QUEUES, problem="JobInputError: bad"
        )
    assert _snapshot(store, "e1") == before
