"""Recovery's judgement, row by row of lifecycle/diagnosis.py's table (no Dagster, no broker)."""

from datetime import UTC, datetime, timedelta

import pytest

from etl_pipelines.lifecycle import Finding, RunSnapshot, RunState, Verdict, diagnose
from etl_pipelines.lifecycle.diagnosis import run_alive
from etl_pipelines.store import JobRecord, JobStatus

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE = 30.0
HEARTBEAT_SECONDS = 10.0  # 3 missed beats: 30 s


def record(
    status: JobStatus,
    changed_ago: float = 120,
    beat_ago: float | None = None,
    queued_ago: float | None = None,
    error: str | None = None,
    retry_count: int = 0,
) -> JobRecord:
    return JobRecord(
        id="j1",
        status=status,
        run_id="r1",
        updated_at=NOW - timedelta(seconds=changed_ago),
        heartbeat_at=None if beat_ago is None else NOW - timedelta(seconds=beat_ago),
        queued_at=NOW - timedelta(seconds=changed_ago if queued_ago is None else queued_ago),
        error=error,
        retry_count=retry_count,
        max_retries=3,
    )


def claimed_retry(**changes: float | str | int | None) -> JobRecord:
    """A job whose due (or manual) retry was claimed 60 s ago, after its run r1 failed 120 s ago:
    the claimer died before the retry's run was made. The record is still on r1, with r1's error."""
    values: dict = {"changed_ago": 60, "queued_ago": 60, "error": "ValueError: boom", "retry_count": 3}
    values.update(changes)
    return record(JobStatus.QUEUED, **values)


def run(
    state: RunState, ago: float = 120, in_broker: bool | None = None, in_line: bool = False
) -> RunSnapshot:
    at = (NOW - timedelta(seconds=ago)).timestamp()

    def broker() -> bool:
        return bool(in_broker)

    return RunSnapshot(
        "r1",
        state,
        launched_at=at,
        started_at=at,
        ended_at=at,
        in_broker=None if in_broker is None else broker,
        in_line=lambda: in_line,
    )


def verdict(job: JobRecord, snapshot: RunSnapshot | None) -> Verdict | None:
    found = diagnose(job, snapshot, now=NOW, grace=GRACE, heartbeat_seconds=HEARTBEAT_SECONDS)
    assert found is None or (isinstance(found, Finding) and found.detail)
    return None if found is None else found.verdict


@pytest.mark.parametrize(
    ("job", "snapshot", "expected"),
    [
        # waiting_retry: the due_retries sensor's business, whatever its run says.
        (record(JobStatus.WAITING_RETRY), None, None),
        (record(JobStatus.WAITING_RETRY), run(RunState.FAILURE), None),
        # queued: the dispatcher died before creating or submitting the run.
        (record(JobStatus.QUEUED), None, Verdict.SUBMIT),
        (record(JobStatus.QUEUED), run(RunState.NOT_STARTED), Verdict.SUBMIT),
        # ... but not within the grace: it may be mid-hand-over.
        (record(JobStatus.QUEUED, changed_ago=5), None, None),
        # waiting for a worker (QUEUED, its task in the broker) or for its table: fine, however long.
        (record(JobStatus.QUEUED), run(RunState.QUEUED, ago=3600, in_broker=True), None),
        (record(JobStatus.QUEUED), run(RunState.QUEUED, ago=3600, in_broker=False, in_line=True), None),
        # ... but a task the broker lost is sent again (the same run, no attempt charged).
        (record(JobStatus.QUEUED), run(RunState.QUEUED, in_broker=False), Verdict.RESEND),
        (record(JobStatus.QUEUED), run(RunState.QUEUED, ago=5, in_broker=False), None),
        (record(JobStatus.QUEUED), run(RunState.QUEUED), None),  # no broker to ask: never a guess
        # sent to Celery: lost only if the broker has no task for it.
        (record(JobStatus.QUEUED), run(RunState.STARTING, in_broker=False), Verdict.REQUEUE),
        (record(JobStatus.QUEUED), run(RunState.STARTING, in_broker=True), None),
        (record(JobStatus.QUEUED), run(RunState.STARTING, ago=5, in_broker=False), None),
        (record(JobStatus.QUEUED), run(RunState.STARTING), None),  # no broker to ask: never a guess
        # the run started but its op never did.
        (record(JobStatus.QUEUED), run(RunState.STARTED), Verdict.REQUEUE),
        (record(JobStatus.QUEUED), run(RunState.STARTED, ago=5), None),
        # the run failed before its op started and nothing recorded it.
        (record(JobStatus.QUEUED), run(RunState.FAILURE), Verdict.FAIL_ATTEMPT),
        (record(JobStatus.QUEUED), run(RunState.FAILURE, ago=5), None),
        # a claimed retry (its last one here: retry_count 3 of 3) whose run was never made: the
        # run it is on is the failed attempt's, charged already. Made now, never charged again.
        (claimed_retry(), run(RunState.FAILURE), Verdict.REQUEUE),
        (claimed_retry(), run(RunState.SUCCESS), Verdict.REQUEUE),  # an operator's retry
        (claimed_retry(error=None), run(RunState.FAILURE), Verdict.REQUEUE),  # queued after it ended
        (claimed_retry(queued_ago=200), run(RunState.FAILURE), Verdict.REQUEUE),  # its error says
        (claimed_retry(changed_ago=5, queued_ago=5), run(RunState.FAILURE), None),  # mid-hand-over
        # started: alive while it beats.
        (record(JobStatus.STARTED, beat_ago=5), run(RunState.STARTED), None),
        (record(JobStatus.STARTED, beat_ago=31), run(RunState.STARTED), Verdict.FAIL_ATTEMPT),
        (record(JobStatus.STARTED), run(RunState.STARTED), Verdict.FAIL_ATTEMPT),  # never beat
    ],
)
def test_diagnosis_table(job: JobRecord, snapshot: RunSnapshot | None, expected: Verdict | None) -> None:
    assert verdict(job, snapshot) == expected


def test_the_broker_is_asked_only_when_it_decides() -> None:
    asked: list[str] = []

    def in_broker() -> bool:
        asked.append("asked")
        return True

    at = (NOW - timedelta(seconds=120)).timestamp()
    for state in (RunState.STARTED, RunState.FAILURE):
        diagnose(
            record(JobStatus.QUEUED),
            RunSnapshot("r1", state, launched_at=at, started_at=at, ended_at=at, in_broker=in_broker),
            now=NOW,
            grace=GRACE,
            heartbeat_seconds=HEARTBEAT_SECONDS,
        )
    assert asked == []
    for state in (RunState.QUEUED, RunState.STARTING):
        diagnose(
            record(JobStatus.QUEUED),
            RunSnapshot("r1", state, launched_at=at, in_broker=in_broker),
            now=NOW,
            grace=GRACE,
            heartbeat_seconds=HEARTBEAT_SECONDS,
        )
    assert asked == ["asked", "asked"]


def test_run_states_are_dagsters() -> None:
    import dagster as dg

    assert {s.value for s in RunState} == {s.value for s in dg.DagsterRunStatus}


@pytest.mark.parametrize(
    ("job", "run_id", "alive"),
    [
        (record(JobStatus.STARTED, beat_ago=5), "r1", True),
        (record(JobStatus.STARTED, beat_ago=31), "r1", False),
        (record(JobStatus.STARTED), "r1", False),  # never beat
        (record(JobStatus.STARTED, beat_ago=5), "other", False),  # the job is on another run
        (record(JobStatus.QUEUED), "r1", True),  # the run is setting up its op
        (record(JobStatus.COMPLETED), "r1", True),  # the run is finishing
        (record(JobStatus.WAITING_RETRY), "r1", False),
    ],
)
def test_run_health_from_the_heartbeat(job: JobRecord, run_id: str, alive: bool) -> None:
    """What the Celery launcher answers run monitoring once Redis has forgotten a running task."""
    assert run_alive(job, run_id, now=NOW, heartbeat_seconds=HEARTBEAT_SECONDS) is alive
    assert run_alive(None, run_id, now=NOW, heartbeat_seconds=HEARTBEAT_SECONDS) is False


def stopped(job: JobRecord, snapshot: RunSnapshot | None) -> str | None:
    found = diagnose(job, snapshot, now=NOW, grace=GRACE, heartbeat_seconds=HEARTBEAT_SECONDS)
    assert found is not None
    return found.stop


def test_an_attempt_that_may_still_run_is_stopped_before_its_job_moves_on() -> None:
    # A stale heartbeat: the worker may be paused or cut off, not dead.
    assert stopped(record(JobStatus.STARTED, beat_ago=31), run(RunState.STARTED)) == "r1"
    assert stopped(record(JobStatus.STARTED), None) == "r1"
    # A run whose op never began may be a process stuck setting it up.
    assert stopped(record(JobStatus.QUEUED), run(RunState.STARTED)) == "r1"
    # No process to stop: never submitted, its task gone from the broker, or its run ended.
    assert stopped(record(JobStatus.QUEUED), None) is None
    assert stopped(record(JobStatus.QUEUED), run(RunState.NOT_STARTED)) is None
    assert stopped(record(JobStatus.QUEUED), run(RunState.QUEUED, in_broker=False)) is None
    assert stopped(record(JobStatus.QUEUED), run(RunState.STARTING, in_broker=False)) is None
    assert stopped(record(JobStatus.QUEUED), run(RunState.FAILURE)) is None
    assert stopped(claimed_retry(), run(RunState.FAILURE)) is None
