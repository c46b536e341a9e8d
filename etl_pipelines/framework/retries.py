"""Retries in Dagster: a due retry or an operator's retry becomes a re-execution of the job's run.

Which job may be retried, and how its record changes, is lifecycle.events' business (claimed with
a status-checked update first, so two processes never queue one retry twice); this module only
makes the Dagster run, and has it made on time.

On time: when a job starts waiting for a retry, a Celery task is sent to its queue with the due
time as its ETA (schedule_due_retry). A worker holds it without taking a pool slot and runs it at
that time: the retry is claimed and its run queued within milliseconds of being due. The
due_retries sensor (every 5 s) stays as the fallback for a lost timer (a worker that died holding
it gives the message back only after the broker's visibility timeout), for a timer that waited for
a pool slot, and for an instance whose run launcher is not ours; whoever claims first starts the
retry, the others find it taken.
"""

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from etl_pipelines.framework._dagster_internal import reexecute_from_snapshots, run_submitter
from etl_pipelines.framework.celery.launcher import EtlCeleryRunLauncher
from etl_pipelines.framework.celery.task import START_DUE_RETRY_TASK
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import JOB_ID_TAG, run_tags
from etl_pipelines.lifecycle import events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Action:
    """One thing retry or recovery did (or, dry, would do) to a job."""

    job_id: str
    action: str
    detail: str

    def __str__(self) -> str:
        return f"{self.job_id}  {self.action:<12}  {self.detail}"


# A timer that fires up to this much before its retry is due (the wall clock was set back while it
# waited) waits for the due time instead of leaving the retry to the sensor.
TIMER_EARLY_SECONDS = 1.0


def run_failed(
    store: JobStore,
    record: JobRecord,
    error: str,
    settings: Settings,
    instance: dg.DagsterInstance | None = None,
) -> JobRecord:
    """The job's run ended outside its op (crash, lost worker, launch error, time limit): an attempt
    failed, retried per the job type's schedule (lifecycle.events.attempt_failed decides), with a
    timer for the retry on `instance`'s workers (default: this process's instance)."""
    after = events.attempt_failed(
        store,
        record,
        record.run_id,
        error=error,
        traceback=None,
        schedule=get_job_type(record.job_type).retry_schedule(settings),
        inside_op=False,
    )
    if after.next_retry_at is not None:
        schedule_due_retry(instance or get_instance(), after)
    return after


def schedule_due_retry(instance: dg.DagsterInstance, record: JobRecord) -> bool:
    """Have a worker of the job's queue start its retry when it is due: a Celery task whose ETA is
    `record.next_retry_at`. Best effort (False if none was sent): the due_retries sensor is the
    fallback, and exactly once is the claim's business, not the timer's."""
    launcher = instance.run_launcher
    if record.next_retry_at is None or not isinstance(launcher, EtlCeleryRunLauncher):
        return False  # Dagster's own launchers have no workers to hold it: the sensor starts it
    try:
        # Its own queue: a worker that takes the job's runs takes its timers. A worker holds an
        # ETA task in memory without a pool slot; it takes one only while it has a free slot
        # (--disable-prefetch), and runs it in a pool slot at the due time.
        launcher.app.send_task(
            START_DUE_RETRY_TASK, args=[record.id], queue=record.queue, eta=record.next_retry_at
        )
    except Exception as exc:  # the broker is down: the sensor will find the retry due
        logger.warning("no timer for the retry of job %s (the sensor will start it): %s", record.id, exc)
        return False
    return True


class RunRefusedError(RuntimeError):
    """The run coordinator failed the new run instead of queueing it (its reason is on the run)."""


def submit_new_run(instance: dg.DagsterInstance, record: JobRecord, settings: Settings) -> dg.DagsterRun:
    """Queue a new run of the job: a re-execution of its latest run, or its first run if it has none.

    A re-execution keeps the parent's config and tags (queue, target, time limit) and links the
    runs in Dagster (parent and root run ids); the coordinator appends the new run to the record.
    With our Celery launcher it is made from the parent's snapshots: a worker or sensor that starts
    retries never loads the code location (a workspace per process).
    """
    parent = instance.get_run_by_id(record.run_id) if record.run_id else None
    run: dg.DagsterRun | None = None
    if parent is not None:
        if isinstance(instance.run_launcher, EtlCeleryRunLauncher):  # launches need no workspace
            run = reexecute_from_snapshots(instance, parent)
        if run is None:
            run = run_submitter(instance).reexecute(parent)
    else:
        # op imports attempt, which imports this module: imported here, where it is needed.
        from etl_pipelines.framework.op import run_config_for

        # Its dispatcher died between saving the record and creating the run: create it now.
        job_cls = get_job_type(record.job_type)
        job = job_cls(**record.payload)
        tags = {JOB_ID_TAG: record.id, **run_tags(job, job_cls, record.queue, settings)}
        run_config = run_config_for(job_cls, job.model_dump(mode="json"))
        run = run_submitter(instance).submit(
            job_cls.job_type(), run_config, tags, run_id=record.run_id or record.id
        )
    if run.status == dg.DagsterRunStatus.FAILURE:
        raise RunRefusedError(f"run {run.run_id} was refused by the run coordinator (see its failure)")
    return run


def retry_failed_job(
    instance: dg.DagsterInstance,
    store: JobStore,
    settings: Settings,
    job_id: str,
    *,
    actor: str,
    reason: str | None = None,
) -> JobRecord:
    """An operator's retry of a failed job: claimed (JobStateError unless failed), then a new run.

    If the run cannot be submitted the job is failed again as it was and the error raised.
    """
    before = store.require(job_id)
    record = events.claim_manual_retry(store, job_id, actor=actor, reason=reason)
    try:
        submit_new_run(instance, record, settings)
    except Exception as exc:
        # JobStateError: admission already failed the job, with its reason (an unknown queue).
        with contextlib.suppress(JobStateError):  # it moved on meanwhile
            events.retry_refused(store, before, f"{type(exc).__name__}: {exc}", actor=actor)
        raise
    return store.require(job_id)


def run_due_retries(
    instance: dg.DagsterInstance, store: JobStore, settings: Settings, now: datetime | None = None
) -> list[Action]:
    """Start every retry that is due: a re-execution of the job's failed run, exactly once."""
    done = []
    for seen in store.due_retries(now or utcnow()):
        action = _start_retry(instance, store, settings, seen)
        if action is not None:
            done.append(action)
    return done


def start_retry_if_due(
    instance: dg.DagsterInstance, store: JobStore, settings: Settings, job_id: str
) -> Action | None:
    """A retry's timer fired: start the job's retry if it is due and still waiting, exactly once
    (as run_due_retries does); None if there was nothing to do."""
    seen = store.get(job_id)
    wait = _until_due(seen)
    if wait is not None and 0 < wait <= TIMER_EARLY_SECONDS:
        time.sleep(wait)
        seen = store.get(job_id)
        wait = _until_due(seen)
    if seen is None or wait is None or wait > 0:
        # Someone else took it, or a stale timer (redelivered, or of an earlier wait) fired while
        # a later retry waits: that one has a timer of its own.
        return None
    return _start_retry(instance, store, settings, seen)


def _until_due(record: JobRecord | None) -> float | None:
    """Seconds until the job's retry is due (<= 0: due); None if it is not waiting for one."""
    if record is None or record.status != JobStatus.WAITING_RETRY or record.next_retry_at is None:
        return None
    return (record.next_retry_at - utcnow()).total_seconds()


def _start_retry(
    instance: dg.DagsterInstance, store: JobStore, settings: Settings, seen: JobRecord
) -> Action | None:
    """Claim the due retry of `seen` (None if another process did first) and queue its run."""
    try:
        record = events.claim_due_retry(store, seen)
    except JobStateError:
        return None  # someone else (a timer, the sensor, retry-job, a UI re-execution) took it
    try:
        submit_new_run(instance, record, settings)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.warning("could not queue the retry of job %s: %s", seen.id, error)
        with contextlib.suppress(JobStateError):  # it moved on meanwhile
            if isinstance(exc, RunRefusedError):
                # Refused for good (its queue is no longer configured, say): no point waiting.
                events.retry_refused(store, seen, error)
            else:
                # Dagster or the database down: it waits again, with a timer if the broker is up.
                schedule_due_retry(instance, events.retry_not_queued(store, seen, error))
        return Action(seen.id, "retry_error", error)
    return Action(seen.id, "retried", f"retry {record.retry_count} of {record.max_retries}")
