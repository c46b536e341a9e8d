"""Retries in Dagster: a due retry or an operator's retry becomes a re-execution of the job's run.

Which job may be retried, and how its record changes, is lifecycle.events' business (claimed with
a status-checked update first, so two processes never queue one retry twice); this module only
makes the Dagster run.
"""

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

import dagster as dg

from etl_pipelines.framework._dagster_internal import run_submitter
from etl_pipelines.framework.op import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import JOB_ID_TAG, run_tags
from etl_pipelines.lifecycle import events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStore
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


def run_failed(store: JobStore, record: JobRecord, error: str, settings: Settings) -> JobRecord:
    """The job's run ended outside its op (crash, lost worker, launch error, time limit): an attempt
    failed, retried per the job type's schedule (lifecycle.events.attempt_failed decides)."""
    return events.attempt_failed(
        store,
        record,
        record.run_id,
        error=error,
        traceback=None,
        schedule=get_job_type(record.job_type).retry_schedule(settings),
        inside_op=False,
    )


class RunRefusedError(RuntimeError):
    """The run coordinator failed the new run instead of queueing it (its reason is on the run)."""


def submit_new_run(instance: dg.DagsterInstance, record: JobRecord, settings: Settings) -> dg.DagsterRun:
    """Queue a new run of the job: a re-execution of its latest run, or its first run if it has none.

    A re-execution keeps the parent's config and tags (queue, target, time limit) and links the
    runs in Dagster (parent and root run ids); the coordinator appends the new run to the record.
    """
    submitter = run_submitter(instance)
    parent = instance.get_run_by_id(record.run_id) if record.run_id else None
    if parent is not None:
        run = submitter.reexecute(parent)
    else:
        # Its dispatcher died between saving the record and creating the run: create it now.
        job_cls = get_job_type(record.job_type)
        job = job_cls(**record.payload)
        tags = {JOB_ID_TAG: record.id, **run_tags(job, job_cls, record.queue, settings)}
        run_config = run_config_for(job_cls, job.model_dump(mode="json"))
        run = submitter.submit(job_cls.job_type(), run_config, tags, run_id=record.run_id or record.id)
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
        try:
            record = events.claim_due_retry(store, seen)
        except JobStateError:
            continue  # someone else (retry-job, a UI re-execution) took it meanwhile
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
                    events.retry_not_queued(store, seen, error)  # Dagster or the database down
            done.append(Action(seen.id, "retry_error", error))
            continue
        done.append(Action(seen.id, "retried", f"retry {record.retry_count} of {record.max_retries}"))
    return done
