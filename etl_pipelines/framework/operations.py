"""What happens to a job after an attempt: retries at their due time, manual retries and resolution,
and recovery of jobs whose work was lost (a flushed broker, a killed worker, a dead dispatcher).

The job table is the source of truth for what should happen next; Dagster's run storage and the
Celery broker say what is actually happening. Every change goes through `JobStore`'s locked,
status-checked transitions, so two processes (the due_retries sensor, `etl-jobs retry-job`,
recovery) never start the same retry twice.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg
import redis

from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import JOB_ID_TAG, run_tags
from etl_pipelines.settings import Settings
from etl_pipelines.store import SYSTEM_ACTOR, JobRecord, JobStateError, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

logger = logging.getLogger(__name__)

# The message of a run failed by recovery; the job_failures sensor leaves those runs to it.
RECOVERY_PREFIX = "etl_pipelines recovery: "


@dataclass(frozen=True)
class Action:
    """One thing retry or recovery did (or, dry, would do) to a job."""

    job_id: str
    action: str
    detail: str

    def __str__(self) -> str:
        return f"{self.job_id}  {self.action:<12}  {self.detail}"


def attempt_failed(store: JobStore, record: JobRecord, error: str, settings: Settings) -> JobRecord:
    """An attempt ended outside the op (crash, lost worker, launch error): retry it per its policy."""
    delays = get_job_type(record.job_type).retry_schedule(settings)
    attempt = record.retry_count
    if attempt < len(delays):
        due = utcnow() + timedelta(seconds=delays[attempt])
        return store.mark_waiting_retry(
            record.id,
            error=error,
            traceback=None,
            next_retry_at=due,
            expect=[JobStatus.QUEUED, JobStatus.STARTED],
            expect_run_id=record.run_id,
            reason=f"attempt {attempt + 1} of {len(delays) + 1} failed: {error}",
        )
    return store.mark_failed(
        record.id,
        error=error,
        traceback=None,
        expect=[JobStatus.QUEUED, JobStatus.STARTED],
        expect_run_id=record.run_id,
    )


def submit_new_run(instance: dg.DagsterInstance, record: JobRecord) -> dg.DagsterRun:
    """Queue a new run of the job: a re-execution of its latest run, or its first run if it has none.

    A re-execution keeps the parent's config and tags (queue, target, time limit) and links the
    runs in Dagster (parent and root run ids); the coordinator appends the new run to the record.
    """
    from etl_pipelines.framework._dagster_internal import run_submitter
    from etl_pipelines.framework.dispatch import run_config_for

    submitter = run_submitter(instance)
    parent = instance.get_run_by_id(record.run_id) if record.run_id else None
    if parent is not None:
        return submitter.reexecute(parent)
    # Its dispatcher died between saving the record and creating the run: create it now.
    job_cls = get_job_type(record.job_type)
    job = job_cls(**record.payload)
    settings = Settings.from_env()
    tags = {JOB_ID_TAG: record.id, **run_tags(job, job_cls, record.queue, settings)}
    return submitter.submit(job_cls.job_type(), run_config_for(job), tags, run_id=record.run_id or record.id)


def retry_job(
    instance: dg.DagsterInstance,
    store: JobStore,
    job_id: str,
    *,
    expect: list[JobStatus],
    retry_count: int | None = None,
    actor: str = SYSTEM_ACTOR,
    reason: str | None = None,
    action: str = "retry",
) -> JobRecord:
    """Claim the job (its status must be one of `expect`) and queue a new run of it.

    JobStateError if another process claimed it first or it is in another state: nothing changes.
    If the run cannot be submitted the claim is undone and the error raised.
    """
    before = store.require(job_id)
    count = before.retry_count if retry_count is None else retry_count
    record = store.claim_retry(
        job_id, expect=expect, retry_count=count, actor=actor, reason=reason, action=action
    )
    try:
        submit_new_run(instance, record)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if before.status == JobStatus.WAITING_RETRY:
            store.mark_waiting_retry(
                job_id,
                error=before.error or error,
                traceback=before.traceback,
                next_retry_at=utcnow() + timedelta(seconds=30),
                expect=[JobStatus.QUEUED],
                reason=f"could not queue the retry ({error}); trying again in 30 s",
            )
        else:
            store.mark_failed(
                job_id,
                error=before.error or error,
                traceback=before.traceback,
                expect=[JobStatus.QUEUED],
                action="retry_failed",
            )
        raise
    return store.require(job_id)


def run_due_retries(
    instance: dg.DagsterInstance, store: JobStore, now: datetime | None = None
) -> list[Action]:
    """Start every retry that is due: a re-execution of the job's failed run, exactly once."""
    done = []
    for record in store.due_retries(now or utcnow()):
        attempt = record.retry_count + 1
        try:
            retry_job(
                instance,
                store,
                record.id,
                expect=[JobStatus.WAITING_RETRY],
                retry_count=attempt,
                reason=f"retry {attempt} of {record.max_retries}, due {record.next_retry_at:%H:%M:%S} UTC",
            )
        except JobStateError:
            continue  # someone else (retry-job, a UI re-execution) took it meanwhile
        except Exception as exc:
            logger.warning("could not queue the retry of job %s: %s", record.id, exc)
            done.append(Action(record.id, "retry_error", f"{type(exc).__name__}: {exc}"))
            continue
        done.append(Action(record.id, "retried", f"retry {attempt} of {record.max_retries}"))
    return done


def _age(since: datetime | None) -> float:
    """Seconds since a job-table timestamp (timezone-aware UTC); infinite for None."""
    return float("inf") if since is None else (utcnow() - since).total_seconds()


def _broker_check(instance: dg.DagsterInstance):
    """The run launcher's "is this run's task still in the broker?" check, if it has one."""
    return getattr(instance.run_launcher, "task_in_broker", None)


def recover(
    instance: dg.DagsterInstance,
    store: JobStore,
    settings: Settings,
    since: timedelta | None = None,
    dry_run: bool = False,
) -> list[Action]:
    """Check every job queued, started or waiting to retry (changed within `since`, or all) against
    Dagster's run storage and the broker; queue again what lost its work, leave alone what is
    queued or running.

    - waiting_retry: the due_retries sensor starts it when due; nothing to do.
    - queued, no run (the dispatcher died after saving the record) or a run created but never
      submitted: submitted now.
    - queued, run STARTING whose Celery task is in neither the queue nor a worker (a flushed or lost
      broker), or STARTED while the op never began: that run is failed and the job queued again.
      The op never ran, so this costs no attempt.
    - started, heartbeat older than 3 x ETL_HEARTBEAT_SECONDS (the worker was killed): the run is
      failed and the attempt counts as failed: the job waits for its next retry, or fails.
    Anything younger than ETL_RECOVERY_GRACE_SECONDS is left alone: it may be mid-hand-over. Each
    repair first claims the job as it was seen, so two recoverers (the sensor and `etl-jobs
    recover`) or a worker starting it meanwhile never lead to two runs.
    """
    actions: list[Action] = []
    grace = settings.recovery_grace_seconds
    in_broker = _broker_check(instance)
    records = store.unfinished(since=None if since is None else utcnow() - since)
    run_records = _run_records(instance, [r.run_id for r in records if r.run_id])
    for record in records:
        run_record = run_records.get(record.run_id) if record.run_id else None
        try:
            verdict = _diagnose(instance, record, run_record, grace, settings, in_broker)
            if verdict is None:
                continue
            kind, detail = verdict
            if dry_run:
                actions.append(Action(record.id, f"would {kind}", detail))
                continue
            store.claim_recovery(record, detail)
            run = run_record.dagster_run if run_record is not None else None
            actions.append(_repair(instance, store, settings, record, run, kind, detail))
        except JobStateError:
            continue  # it moved on while we looked: a worker started it, a sensor retried it
        except redis.RedisError:
            raise  # the broker cannot be asked: nothing is judged lost on a guess
        except Exception as exc:  # one bad record must not stop the recovery of the others
            logger.exception("recovery of job %s failed", record.id)
            actions.append(Action(record.id, "error", f"{type(exc).__name__}: {exc}"))
    return actions


def _run_records(instance: dg.DagsterInstance, run_ids: list[str], chunk: int = 500) -> dict:
    """Run records by id, a few hundred per query (a long backlog is checked every 30 s)."""
    found = {}
    for start in range(0, len(run_ids), chunk):
        for run_record in instance.get_run_records(dg.RunsFilter(run_ids=run_ids[start : start + chunk])):
            found[run_record.dagster_run.run_id] = run_record
    return found


def _diagnose(
    instance: dg.DagsterInstance, record: JobRecord, run_record, grace: float, settings: Settings, in_broker
):
    """(what to do, why) for a job whose work is lost, or None if it is fine."""
    if record.status == JobStatus.WAITING_RETRY:
        return None
    if record.status == JobStatus.QUEUED:
        if _age(record.updated_at) < grace:
            return None
        if run_record is None:
            return "submit", "its run was never created"
        run = run_record.dagster_run
        if run.status == dg.DagsterRunStatus.NOT_STARTED:
            return "submit", f"run {run.run_id} was created but never queued"
        if (
            run.status == dg.DagsterRunStatus.STARTING
            and _seconds_since(_starting_at(instance, run.run_id)) > grace
            and in_broker is not None
            and not in_broker(run)
        ):
            return "requeue", f"run {run.run_id} was sent to Celery but its task is gone"
        if run.status == dg.DagsterRunStatus.STARTED and _seconds_since(run_record.start_time) > grace:
            started = _seconds_since(run_record.start_time)
            return "requeue", f"run {run.run_id} started {started:.0f} s ago but its op never did"
        if run.status == dg.DagsterRunStatus.FAILURE and _seconds_since(run_record.end_time) > grace:
            return "fail_attempt", f"run {run.run_id} failed before its op started"
        return None
    # Started: the op runs somewhere, and beats.
    if _age(record.heartbeat_at) > settings.heartbeat_timeout:
        beat = f"{record.heartbeat_at:%H:%M:%S} UTC" if record.heartbeat_at else "never"
        return "fail_attempt", f"no heartbeat from its worker since {beat} (run {record.run_id})"
    return None


def _seconds_since(timestamp: float | None) -> float:
    """Seconds since a Unix timestamp (Dagster's run start/end and event times; no time zones)."""
    return float("inf") if timestamp is None else time.time() - timestamp


def _starting_at(instance: dg.DagsterInstance, run_id: str) -> float | None:
    """When the run was launched: its latest RUN_STARTING event."""
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_STARTING)
    return max((event.timestamp for event in events), default=None)


def _repair(
    instance: dg.DagsterInstance,
    store: JobStore,
    settings: Settings,
    record: JobRecord,
    run: dg.DagsterRun | None,
    kind: str,
    detail: str,
) -> Action:
    if kind == "submit" and run is not None:
        from etl_pipelines.framework._dagster_internal import run_submitter

        run_submitter(instance).submit_created(run)
        store.record_event(record.id, "recovered", reason=detail)
        return Action(record.id, "submitted", detail)
    if run is not None and not run.is_finished:
        # Failed first: a task that turns up after all finds its run finished and does nothing.
        instance.report_run_failed(run, message=RECOVERY_PREFIX + detail)
    if kind == "fail_attempt":
        after = attempt_failed(store, record, f"WorkerLost: {detail}", settings)
        return Action(record.id, "recovered", f"{detail}; now {after.status.value}")
    store.record_event(record.id, "recovered", reason=detail)
    submit_new_run(instance, record)
    return Action(record.id, "requeued", detail)
