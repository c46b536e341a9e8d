"""Recovery of jobs whose work was lost (a flushed broker, a killed worker, a dead dispatcher).

Dagster's run storage and the Celery broker say what is actually happening; the job table says
what should. Each repair first claims the job as it was seen, so two recoverers never act twice.
"""

import logging
import time
from datetime import datetime, timedelta

import dagster as dg
import redis

from etl_pipelines.framework.retries import Action, attempt_failed, submit_new_run
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStatus, JobStore
from etl_pipelines.store.models import utcnow

logger = logging.getLogger(__name__)

# The message of a run failed by recovery; the job_failures sensor leaves those runs to it.
RECOVERY_PREFIX = "etl_pipelines recovery: "


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
