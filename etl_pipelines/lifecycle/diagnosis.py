"""Recovery's judgement: what was found for an unfinished job, and what is to be done. No Dagster here.

The framework describes the job's latest run as a RunSnapshot (from Dagster's run storage, and the
broker when it matters); `diagnose()` reads it beside the job record, as a table:

| job           | its run                                           | verdict                         |
| ------------- | ------------------------------------------------- | ------------------------------- |
| waiting_retry | -                                                 | none: due_retries starts it     |
| queued        | none                                              | submit: create it               |
| queued        | NOT_STARTED (created, never submitted)            | submit                          |
| queued        | ended before the job was queued again (a claimed  | requeue: its run made now, no   |
|               | retry whose run was never made)                   | attempt charged                 |
| queued        | QUEUED past the grace, not in its table's line,   | resend its task: no attempt     |
|               | task not in the broker                            | charged, no new run             |
| queued        | STARTING past the grace, task not in the broker   | requeue: no attempt charged     |
| queued        | STARTED past the grace, the op never began        | requeue, its run stopped first  |
| queued        | FAILURE past the grace, no failure recorded       | fail_attempt                    |
| started       | heartbeat more than BEATS_MISSED beats old        | fail_attempt, its run stopped   |
|               |                                                   | first                           |
| anything else, or a record changed within the grace               | none                            |

"Stopped first" (Finding.stop): the run's attempt may still be alive (a paused or cut-off
worker), so before the job moves on recovery revokes its Celery task and ends its sessions in the
target database (framework/fence.py): it can never work beside the job's next attempt.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from etl_pipelines.store import JobRecord, JobStatus


class RunState(enum.StrEnum):
    """A Dagster run's status, by the same values (DagsterRunStatus.value)."""

    QUEUED = "QUEUED"
    NOT_STARTED = "NOT_STARTED"
    STARTING = "STARTING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"
    MANAGED = "MANAGED"
    SUSPENDED = "SUSPENDED"


@dataclass(frozen=True)
class RunSnapshot:
    """What recovery knows of a job's run; times are Unix timestamps (Dagster's), None if unknown."""

    run_id: str
    state: RunState
    launched_at: float | None = None  # when it became QUEUED or STARTING (its status's time)
    started_at: float | None = None
    ended_at: float | None = None
    # Asked only when it matters (a Redis round trip): is its task still in the broker or held by
    # a worker? None: the launcher has no broker to ask.
    in_broker: Callable[[], bool] | None = None
    # Is it waiting in its target table's line (lifecycle.admission), so not in the broker by
    # design? Asked only when the broker has no task for it. None: never in a line.
    in_line: Callable[[], bool] | None = None


# A started attempt whose heartbeat is this many beats old has lost its process.
BEATS_MISSED = 3


def beats(record: JobRecord, *, now: datetime, heartbeat_seconds: float) -> bool:
    """Is the started attempt of `record` still beating (its last beat under BEATS_MISSED beats old)?"""
    beat = record.heartbeat_at
    return beat is not None and (now - beat).total_seconds() <= BEATS_MISSED * heartbeat_seconds


def run_alive(record: JobRecord | None, run_id: str, *, now: datetime, heartbeat_seconds: float) -> bool:
    """Run health when the broker cannot say (a flushed result backend): is the job's attempt in
    `run_id` alive? Queued on it: the run is setting up its op (ms); finished: the run is ending."""
    if record is None or record.run_id != run_id:
        return False
    if record.status == JobStatus.STARTED:
        return beats(record, now=now, heartbeat_seconds=heartbeat_seconds)
    return record.status == JobStatus.QUEUED or record.status.is_final


class Verdict(enum.StrEnum):
    SUBMIT = "submit"  # the run was never created or never submitted: do it now
    RESEND = "resend"  # the run waits for a worker but the broker lost its task: send it again
    REQUEUE = "requeue"  # the run's work is lost before the op began: a new run, no attempt charged
    FAIL_ATTEMPT = "fail_attempt"  # the attempt is lost: counted as failed, retried per its schedule


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    detail: str
    # The run whose attempt may still be working: stopped before the job moves on. None: its
    # process is known gone or never had the op (no task, a run that ended).
    stop: str | None = None


# A Dagster run ends when its status is one of these.
ENDED = frozenset({RunState.SUCCESS, RunState.FAILURE, RunState.CANCELED})


def claimed_retry(record: JobRecord, run: RunSnapshot) -> bool:
    """Is `record` queued for a retry (due, or an operator's) whose run was never made?

    A claimed retry stays on the run whose attempt it follows until the new run is admitted
    (events.run_queued gives the job that run, and clears the last attempt's error): that run
    ended before the job was queued again, and its failure is still on the record.
    """
    queued_after = (
        record.queued_at is not None
        and run.ended_at is not None
        and record.queued_at.timestamp() > run.ended_at
    )
    return run.state in ENDED and (queued_after or record.error is not None)


def diagnose(
    record: JobRecord,
    run: RunSnapshot | None,
    *,
    now: datetime,
    grace: float,
    heartbeat_seconds: float,
) -> Finding | None:
    """What to do for a job whose work is lost, or None if it is fine (or too young to judge)."""
    unix_now = now.timestamp()

    def older(timestamp: float | None, than: float) -> bool:
        return timestamp is None or unix_now - timestamp > than

    if record.status == JobStatus.QUEUED:
        if not older(record.updated_at.timestamp(), grace):
            return None  # it may be mid-hand-over
        if run is None:
            return Finding(Verdict.SUBMIT, "its run was never created")
        if run.state == RunState.NOT_STARTED:
            return Finding(Verdict.SUBMIT, f"run {run.run_id} was created but never queued")
        if claimed_retry(record, run):
            # Its attempt was charged when run_id failed: the retry is made now, never charged again.
            return Finding(
                Verdict.REQUEUE,
                f"retry {record.retry_count} was claimed after run {run.run_id} ended but its run "
                "was never made",
            )
        if (
            run.state == RunState.QUEUED
            and older(run.launched_at, grace)
            and run.in_broker is not None
            and not run.in_broker()
            and not (run.in_line is not None and run.in_line())
        ):
            return Finding(Verdict.RESEND, f"run {run.run_id} waits for a worker but its task is gone")
        if (
            run.state == RunState.STARTING
            and older(run.launched_at, grace)
            and run.in_broker is not None
            and not run.in_broker()
        ):
            return Finding(Verdict.REQUEUE, f"run {run.run_id} was sent to Celery but its task is gone")
        if run.state == RunState.STARTED and older(run.started_at, grace):
            started = "" if run.started_at is None else f" {unix_now - run.started_at:.0f} s ago"
            return Finding(
                Verdict.REQUEUE, f"run {run.run_id} started{started} but its op never did", stop=run.run_id
            )
        if run.state == RunState.FAILURE and older(run.ended_at, grace):
            return Finding(Verdict.FAIL_ATTEMPT, f"run {run.run_id} failed before its op started")
        return None
    if record.status == JobStatus.STARTED and not beats(record, now=now, heartbeat_seconds=heartbeat_seconds):
        beat = record.heartbeat_at
        seen = f"{beat:%H:%M:%S} UTC" if beat else "never"
        return Finding(
            Verdict.FAIL_ATTEMPT,
            f"no heartbeat from its worker since {seen} (run {record.run_id})",
            stop=record.run_id,
        )
    return None
