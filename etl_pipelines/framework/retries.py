"""Retries: a due retry queued as a re-execution of the failed run, and a manual retry of a failed job.

The job table says what should happen next; each retry is claimed with a status-checked update
first, so two processes (the due_retries sensor, `etl-jobs retry-job`) never queue one retry twice.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from etl_pipelines.framework.op import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import JOB_ID_TAG, run_tags
from etl_pipelines.settings import Settings
from etl_pipelines.store import SYSTEM_ACTOR, JobRecord, JobStateError, JobStatus, JobStore
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

    submitter = run_submitter(instance)
    parent = instance.get_run_by_id(record.run_id) if record.run_id else None
    if parent is not None:
        return submitter.reexecute(parent)
    # Its dispatcher died between saving the record and creating the run: create it now.
    job_cls = get_job_type(record.job_type)
    job = job_cls(**record.payload)
    settings = Settings.from_env()
    tags = {JOB_ID_TAG: record.id, **run_tags(job, job_cls, record.queue, settings)}
    run_config = run_config_for(job_cls, job.model_dump(mode="json"))
    return submitter.submit(job_cls.job_type(), run_config, tags, run_id=record.run_id or record.id)


def queue_retry(
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
            queue_retry(
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
