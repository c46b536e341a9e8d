"""A job's life as a table, and the events that move it. No Dagster here.

TRANSITIONS lists every event: the statuses a job may be in for it to happen, whether the job must
still be on the caller's run, and the status it leads to. Each event function below says which
fields change with it. `_apply` checks the row and writes the change in one locked, conditional
UPDATE (JobStore.transition), appending one audit row; nothing else in the package writes a job's
status. Callers (dispatch, the run coordinator, the op, sensors, recovery, the CLI) only call
these functions, with the store and settings passed in.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from etl_pipelines.errors import JobInputError
from etl_pipelines.lifecycle.queues import check_queue
from etl_pipelines.lifecycle.retry import RetrySchedule
from etl_pipelines.store import ANY_RUN, SYSTEM_ACTOR, JobRecord, JobStateError, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

QUEUED = JobStatus.QUEUED
STARTED = JobStatus.STARTED
WAITING_RETRY = JobStatus.WAITING_RETRY
COMPLETED = JobStatus.COMPLETED
FAILED = JobStatus.FAILED
CANCELLED = JobStatus.CANCELLED
UNFINISHED = frozenset({QUEUED, STARTED, WAITING_RETRY})

# How long a due retry that could not be queued (Dagster or the database down) waits to be tried again.
REQUEUE_DELAY = timedelta(seconds=30)


@dataclass(frozen=True)
class Transition:
    """`event` may happen to a job whose status is in `sources`; the job's status becomes `target`.

    `on_run`: the caller names the run it acts for and the job must still be on it, so an outcome
    from a superseded run is refused. `target` None: the status stays (a claim), or the retry
    policy chooses waiting_retry or failed, and the audit row is named after the choice.
    """

    event: str
    sources: frozenset[JobStatus]
    target: JobStatus | None
    on_run: bool


def _row(event: str, sources: set[JobStatus], target: JobStatus | None, on_run: bool) -> Transition:
    return Transition(event, frozenset(sources), target, on_run)


TRANSITIONS: dict[str, Transition] = {
    row.event: row
    for row in (
        # An attempt's own outcomes, written by its op, only while the job is that attempt.
        _row("started", {QUEUED}, STARTED, on_run=True),
        _row("completed", {STARTED}, COMPLETED, on_run=True),
        _row("attempt_failed", {STARTED}, None, on_run=True),
        # The job's run ended outside its op: launch error, crash, time limit, lost worker.
        _row("run_failed", {QUEUED, STARTED}, None, on_run=True),
        _row("cancelled", {QUEUED, STARTED}, CANCELLED, on_run=True),
        # An operator cancels a job waiting for its retry (it has no run to cancel), as seen.
        _row("retry_cancelled", {WAITING_RETRY}, CANCELLED, on_run=False),
        # Admission of a run: refused before it ran, or another run of the job (a retry's run, a
        # UI re-execution), never while an attempt runs and, for a re-execution, only from the
        # run it re-executes (so of two re-executions of one run only the first takes the job).
        _row("rejected", {QUEUED}, FAILED, on_run=True),
        _row("run_queued", set(JobStatus) - {STARTED}, QUEUED, on_run=False),
        # Retries: claimed when due; put back if the claimed retry could not be queued.
        _row("retry", {WAITING_RETRY}, QUEUED, on_run=False),
        _row("retry_deferred", {QUEUED}, WAITING_RETRY, on_run=False),
        # Manual intervention, failed jobs only.
        _row("manual_retry", {FAILED}, QUEUED, on_run=False),
        _row("retry_failed", {QUEUED}, FAILED, on_run=False),
        _row("marked_completed", {FAILED}, COMPLETED, on_run=False),
        # Recovery claims a job exactly as it saw it (status, run, last change) before repairing.
        _row("recovering", set(UNFINISHED), None, on_run=True),
    )
}


def _apply(
    store: JobStore,
    event: str,
    job_id: str,
    *,
    run_id: Any = ANY_RUN,
    target: JobStatus | None = None,
    sources: frozenset[JobStatus] | None = None,
    unchanged_since: datetime | None = None,
    changes: Callable[[JobRecord], dict[str, Any]] | None = None,
    actor: str = SYSTEM_ACTOR,
    reason: str | None = None,
    **values: Any,
) -> JobRecord:
    row = TRANSITIONS[event]
    if row.on_run and run_id is ANY_RUN:
        raise TypeError(f"event {event!r} must name the run it happens on")
    status = row.target or target
    if status is not None:
        # Derived from the status unless the event says otherwise: only a running attempt beats,
        # only a waiting job has a retry due, only a final job has finished.
        values["status"] = status
        if status != STARTED:
            values.setdefault("heartbeat_at", None)
        if status != WAITING_RETRY:
            values.setdefault("next_retry_at", None)
        values.setdefault("finished_at", utcnow() if status.is_final else None)
    return store.transition(
        job_id,
        event if row.target is not None or status is None else status.value,
        expect=row.sources if sources is None else row.sources & sources,
        expect_run_id=run_id,
        unchanged_since=unchanged_since,
        actor=actor,
        reason=reason,
        changes=changes,
        **values,
    )


# Fields that describe an outcome; a new run starts without them.
_CLEAN_SLATE: dict[str, Any] = {
    "result": None,
    "error": None,
    "traceback": None,
    "finished_at": None,
    "next_retry_at": None,
    "alerted_at": None,
    "heartbeat_at": None,
}


# -- a record comes to be -------------------------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    """What a job record is made of, whoever makes it (dispatch, the coordinator, the op)."""

    id: str
    job_type: str
    job_class: str
    queue: str
    payload: dict[str, Any]
    schedule: RetrySchedule


def bootstrap(store: JobStore, job: NewJob, run_id: str, *, must_be_new: bool = False) -> JobRecord:
    """The job's record, created queued on `run_id` if it does not exist yet (the one place records
    are made). `must_be_new`: an existing record is an error (dispatch made the id up)."""
    if not must_be_new:
        existing = store.get(job.id)
        if existing is not None:
            return existing
    record, created = _create(store, job, run_id)
    if must_be_new and not created:
        raise JobStateError(f"job {job.id} already exists")
    return record


def _create(store: JobStore, job: NewJob, run_id: str) -> tuple[JobRecord, bool]:
    """Insert the record (queued on `run_id`): (it, True), or (the one another process inserted
    first, False)."""
    now = utcnow()
    record = JobRecord(
        id=job.id,
        job_type=job.job_type,
        job_class=job.job_class,
        queue=job.queue,
        status=QUEUED,
        payload=job.payload,
        max_retries=job.schedule.max_retries,
        retry_count=0,
        run_id=run_id,
        run_ids=[run_id],
        created_at=now,
        queued_at=now,
        updated_at=now,
    )
    if store.insert(record, action="queued"):
        return record, True
    return store.require(job.id), False


class Refused(Exception):
    """A submitted run may not run for its job; the message says why (the run is failed with it)."""


class ForeignJob(Refused):
    """A run names as its job one it cannot be a run of (a forged or mistaken etl/job_id): a job
    of another type, or, for a fresh launch, any job but the one its own id starts."""


def admit_run(
    store: JobStore,
    job: NewJob,
    run_id: str,
    *,
    parent_run_id: str | None,
    queues: tuple[str, ...],
    problem: str | None = None,
    same_params: Callable[[dict[str, Any]], bool] | None = None,
) -> JobRecord:
    """A run of `job` was submitted (from anywhere): make the record follow it, or refuse it.

    A re-execution runs the job as it was: its parameters must be the job's own (`same_params`
    compares the record's with the run's; default: equal), else it is refused, the record untouched
    (a launch naming the job's run as its parent cannot change what the job does).

    Whose job the run is comes first, and nothing is written for a run that may not act for the
    job it names: an existing job is taken only by one of its own runs (in run_ids: a submission
    repeated by recovery) or by a re-execution of its current run (UI re-execution, due and manual
    retries; never while an attempt runs); a job that does not exist yet only by its first run
    (its id is that run's id) or a re-execution. Then the run itself: an unknown queue, or
    `problem` (the parameters failed validation: "JobInputError: ..."), refuses it. The job's own
    queued run refused (a new job's first run, above all) fails the job with the reason, at once
    and without retries; any other job's record is left exactly as it was.
    """
    existing = store.get(job.id)
    _check_claim(existing, job, run_id, parent_run_id)
    if existing is not None and run_id not in existing.run_ids:
        matches = same_params(existing.payload) if same_params else existing.payload == job.payload
        if not matches:
            raise Refused(
                f"run {run_id} re-executes job {job.id} with other parameters than the job's own;"
                " a re-execution runs the job as it was (dispatch a new job for other parameters)"
            )
    reason, error = None, problem
    try:
        check_queue(job.queue, queues)
    except ValueError as exc:
        reason, error = str(exc), f"{type(exc).__name__}: {exc}"
    record = existing
    if record is None:
        record, created = _create(store, job, run_id)
        if not created:  # another process made it first (this same run, submitted twice?)
            _check_claim(record, job, run_id, parent_run_id)
    if error is not None:
        if record.status == QUEUED and record.run_id == run_id:
            with contextlib.suppress(JobStateError):  # it moved on meanwhile: nothing to reject
                _apply(store, "rejected", job.id, run_id=run_id, reason=error, error=error)
        raise Refused(reason or error)
    if run_id in record.run_ids:
        return record
    try:
        return run_queued(store, job.id, run_id, parent_run_id=parent_run_id, payload=job.payload)
    except JobStateError as exc:
        raise Refused(f"not queued: {exc} (re-execute the job's latest run once it has ended)") from None


def _check_claim(record: JobRecord | None, job: NewJob, run_id: str, parent_run_id: str | None) -> None:
    """Refused unless run `run_id` may act for the job `job.id` names (its tag etl/job_id, or its
    root run): a forged or mistaken job id never touches the job it names."""
    if record is None:
        if parent_run_id is None and job.id != run_id:
            raise ForeignJob(
                f"run tag etl/job_id={job.id} names no job, and a new job's id is its first run's id"
                f" ({run_id})"
            )
        return
    if record.job_type != job.job_type:
        raise ForeignJob(f"run tag etl/job_id={job.id} names a {record.job_type} job, not {job.job_type}")
    if run_id in record.run_ids:
        return  # one of the job's own runs, submitted again (recovery)
    if parent_run_id is None:
        raise ForeignJob(
            f"run tag etl/job_id={job.id} names an existing job, and this run is not one of its runs"
            f" nor a re-execution of its run {record.run_id}"
        )
    if parent_run_id != record.run_id:
        raise Refused(
            f"not queued: run {run_id} re-executes run {parent_run_id}, but job {job.id} is on run"
            f" {record.run_id} (re-execute the job's latest run once it has ended)"
        )


def run_queued(
    store: JobStore,
    job_id: str,
    run_id: str,
    *,
    parent_run_id: str | None,
    payload: dict[str, Any] | None = None,
) -> JobRecord:
    """Another run of the job was submitted: it becomes the job's run (appended to run_ids).

    A finished job run again (a UI re-execution) gets its whole retry schedule again.
    """

    def changes(record: JobRecord) -> dict[str, Any]:
        values: dict[str, Any] = {
            **_CLEAN_SLATE,
            "run_ids": [*record.run_ids, run_id],
            "run_id": run_id,
            "queued_at": record.queued_at if record.status == QUEUED else utcnow(),
        }
        if payload is not None:
            values["payload"] = payload
        if record.status.is_final:
            values["retry_count"] = 0
        return values

    reason = f"re-execution of run {parent_run_id}" if parent_run_id else None
    return _apply(
        store,
        "run_queued",
        job_id,
        run_id=parent_run_id if parent_run_id is not None else ANY_RUN,
        changes=changes,
        reason=reason,
    )


# -- an attempt ---------------------------------------------------------------------------------


def started(store: JobStore, job_id: str, run_id: str) -> JobRecord:
    """An attempt began in `run_id`, which must be the job's queued run."""

    def changes(record: JobRecord) -> dict[str, Any]:
        # Stamped when the write lands, not when it was first tried: a start written after retries
        # through a blip must not look like a stale heartbeat to recovery.
        now = utcnow()
        return {"started_at": record.started_at or now, "heartbeat_at": now}

    return _apply(store, "started", job_id, run_id=run_id, changes=changes)


def completed(store: JobStore, job_id: str, run_id: str, result: Any) -> JobRecord:
    """The attempt in `run_id` succeeded with `result` (JSON)."""
    return _apply(
        store,
        "completed",
        job_id,
        run_id=run_id,
        result=result,
        error=None,
        traceback=None,
    )


def attempt_failed(
    store: JobStore,
    seen: JobRecord,
    run_id: str | None,
    *,
    error: str,
    traceback: str | None,
    schedule: RetrySchedule,
    retryable: bool = True,
    inside_op: bool = True,
) -> JobRecord:
    """An attempt failed: the job waits for its next retry when the schedule has one, else fails.

    The one retry decision, used by the op (`inside_op`: the job must be started on `run_id`) and
    by whatever sees a run end outside its op (sensors, recovery: queued or started on `run_id`).
    Not `retryable` (bad input, a failed check): failed at once. Decided on `seen`, the record as
    the caller read it, and written only if nothing changed it since (else JobStateError): a
    failure seen before a retry was claimed is never charged to that retry.
    """
    attempt = seen.retry_count + 1  # this attempt's number; retry_count counts retries performed
    wait = schedule.wait_before(attempt) if retryable else None
    values: dict[str, Any] = {"error": error, "traceback": traceback}
    if wait is None:
        target, reason = FAILED, error
    else:
        target = WAITING_RETRY
        values["next_retry_at"] = utcnow() + timedelta(seconds=wait)
        reason = f"attempt {attempt} of {schedule.max_retries + 1} failed: {error}; retry in {wait:g} s"
    return _apply(
        store,
        "attempt_failed" if inside_op else "run_failed",
        seen.id,
        run_id=run_id,
        target=target,
        unchanged_since=seen.updated_at,
        reason=reason,
        **values,
    )


def run_failure_applies(record: JobRecord | None, run_id: str, ended_at: float | None) -> bool:
    """Does a run failure seen outside the op (run_failed) still concern the job? Not if the job
    moved to another run or out of the row's statuses (the op or recovery recorded it), nor if it
    was queued again (a retry claimed) after the run ended (`ended_at`, a Unix time)."""
    if record is None or record.run_id != run_id or record.status not in TRANSITIONS["run_failed"].sources:
        return False
    queued_at = record.queued_at
    return not (record.status == QUEUED and ended_at and queued_at and queued_at.timestamp() > ended_at)


def cancelled(
    store: JobStore, job_id: str, run_id: str, *, reason: str | None = None, actor: str = SYSTEM_ACTOR
) -> JobRecord:
    """The job's run `run_id` was cancelled before it ended."""
    return _apply(
        store,
        "cancelled",
        job_id,
        run_id=run_id,
        actor=actor,
        reason=reason,
    )


def retry_cancelled(store: JobStore, seen: JobRecord, *, actor: str, reason: str | None) -> JobRecord:
    """An operator cancels a job waiting for its retry, as they saw it: JobStateError if its retry
    was claimed (or anything else changed) since, so a retry being queued is never half-cancelled."""
    return _apply(
        store,
        "retry_cancelled",
        seen.id,
        unchanged_since=seen.updated_at,
        actor=actor,
        reason=reason,
    )


# -- retries ------------------------------------------------------------------------------------


def claim_due_retry(store: JobStore, seen: JobRecord) -> JobRecord:
    """Take a job whose retry is due: queued for its next attempt, unless another process took it."""
    attempt = seen.retry_count + 1
    due = f", due {seen.next_retry_at:%H:%M:%S} UTC" if seen.next_retry_at else ""
    return _apply(
        store,
        "retry",
        seen.id,
        unchanged_since=seen.updated_at,  # the count is computed from the snapshot: it must hold
        reason=f"retry {attempt} of {seen.max_retries}{due}",
        queued_at=utcnow(),
        retry_count=attempt,
    )


def retry_not_queued(store: JobStore, before: JobRecord, error: str) -> JobRecord:
    """A claimed due retry could not be queued: it waits again (REQUEUE_DELAY), its count unchanged."""
    return _apply(
        store,
        "retry_deferred",
        before.id,
        reason=f"could not queue the retry ({error}); trying again in {REQUEUE_DELAY.seconds} s",
        error=before.error or error,
        traceback=before.traceback,
        retry_count=before.retry_count,
        next_retry_at=utcnow() + REQUEUE_DELAY,
    )


def claim_manual_retry(store: JobStore, job_id: str, *, actor: str, reason: str | None) -> JobRecord:
    """An operator retries a failed job: queued again with its whole retry schedule."""
    return _apply(
        store,
        "manual_retry",
        job_id,
        actor=actor,
        reason=reason,
        queued_at=utcnow(),
        retry_count=0,
    )


def retry_refused(store: JobStore, before: JobRecord, error: str, *, actor: str = SYSTEM_ACTOR) -> JobRecord:
    """A claimed retry (manual, or due whose run the coordinator refused) could not be queued: the
    job is failed, with its last error, as it was before the claim."""
    return _apply(
        store,
        "retry_failed",
        before.id,
        actor=actor,
        reason=error,
        error=before.error or error,
        traceback=before.traceback,
        retry_count=before.retry_count,
        finished_at=before.finished_at or utcnow(),
    )


def mark_completed(store: JobStore, job_id: str, *, actor: str, reason: str) -> JobRecord:
    """An operator resolves a failed job by hand, with the reason kept in its result and history."""
    if not reason or not reason.strip():
        raise JobInputError("marking a job completed by hand needs a reason")
    return _apply(
        store,
        "marked_completed",
        job_id,
        actor=actor,
        reason=reason,
        result={"resolved_manually": reason},
        error=None,
        traceback=None,
    )


# -- recovery -----------------------------------------------------------------------------------


def claim_recovery(store: JobStore, seen: JobRecord, reason: str) -> JobRecord:
    """Take a job recovery found lost, as it was seen: JobStateError if anything changed since."""
    return _apply(
        store,
        "recovering",
        seen.id,
        run_id=seen.run_id,
        sources=frozenset({seen.status}),
        unchanged_since=seen.updated_at,
        reason=reason,
    )
