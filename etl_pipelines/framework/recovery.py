"""Recovery of jobs whose work was lost (a flushed broker, a killed worker, a dead dispatcher).

Dagster's run storage and the Celery broker say what is actually happening; the job table says
what should. This module gathers the first two into a lifecycle RunSnapshot per job, lets
`lifecycle.diagnose` judge (the table of what is found and what is done lives there), claims the
job as it was seen, and carries the verdict out in Dagster. Two recoverers (the job_recovery sensor
and `etl-jobs recover`), or a worker starting the job meanwhile, never lead to two runs.

An attempt judged lost may still be alive (a paused process, a worker cut off from the job
table): before its job moves on, recovery stops it (diagnosis's Finding.stop): its Celery task is
revoked and its sessions in the target database are ended, so it cannot work beside its retry
(framework/fence.py; the retry also waits for the table's lock).
"""

import contextlib
import logging
from datetime import timedelta

import dagster as dg
import redis

from etl_pipelines.framework._dagster_internal import run_submitter
from etl_pipelines.framework.fence import attempt_done, end_sessions, is_postgresql
from etl_pipelines.framework.launch import hand_on, start
from etl_pipelines.framework.retries import Action, run_failed, submit_new_run
from etl_pipelines.lifecycle import Finding, RunSnapshot, RunState, Verdict, admission, diagnose, events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStore
from etl_pipelines.store.models import utcnow

logger = logging.getLogger(__name__)

# The message of a run failed by recovery; the job_failures sensor leaves those runs to it.
RECOVERY_PREFIX = "etl_pipelines recovery: "


def recover(
    instance: dg.DagsterInstance,
    store: JobStore,
    settings: Settings,
    since: timedelta | None = None,
    dry_run: bool = False,
) -> list[Action]:
    """Check every job queued, started or waiting to retry (changed within `since`, or all) against
    Dagster's run storage and the broker; queue again what lost its work, leave alone what is
    queued or running (lifecycle/diagnosis.py says which is which)."""
    actions: list[Action] = []
    records = store.unfinished(since=None if since is None else utcnow() - since)
    run_records = _run_records(instance, [r.run_id for r in records if r.run_id])
    in_broker = getattr(instance.run_launcher, "task_in_broker", None)
    if not dry_run:
        actions += _release_ended_holders(instance, store)
    for record in records:
        run_record = run_records.get(record.run_id) if record.run_id else None
        try:
            snapshot = _snapshot(instance, store, run_record, in_broker)
            finding = diagnose(
                record,
                snapshot,
                now=utcnow(),
                grace=settings.recovery_grace_seconds,
                heartbeat_seconds=settings.heartbeat_seconds,
            )
            if finding is None:
                continue
            if finding.stop is not None and _work_done(settings, finding.stop) is not False:
                # Its work is committed and it is still recording its outcome (a worker cut off from
                # the job table), or the target cannot tell: running it again could do that work
                # twice. Looked at again next round.
                logger.warning(
                    "job %s: its attempt in run %s has done its work and is recording its outcome, "
                    "or the target cannot say; left alone",
                    record.id,
                    finding.stop,
                )
                continue
            if dry_run:
                actions.append(Action(record.id, f"would {finding.verdict.value}", finding.detail))
                continue
            events.claim_recovery(store, record, finding.detail)
            run = run_record.dagster_run if run_record is not None else None
            actions.append(_repair(instance, store, settings, record, run, finding))
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
    for first in range(0, len(run_ids), chunk):
        for run_record in instance.get_run_records(dg.RunsFilter(run_ids=run_ids[first : first + chunk])):
            found[run_record.dagster_run.run_id] = run_record
    return found


def _snapshot(instance: dg.DagsterInstance, store: JobStore, run_record, in_broker) -> RunSnapshot | None:
    """The lifecycle's view of a Dagster run (broker and table line asked lazily)."""
    if run_record is None:
        return None
    run = run_record.dagster_run
    return RunSnapshot(
        run_id=run.run_id,
        state=RunState(run.status.value),
        # A QUEUED or STARTING run's row last changed when it took that status.
        launched_at=run_record.update_timestamp.timestamp(),
        started_at=run_record.start_time,
        ended_at=run_record.end_time,
        in_broker=None if in_broker is None else (lambda: bool(in_broker(run))),
        in_line=lambda: admission.waiting(store, run.run_id),
    )


def _release_ended_holders(instance: dg.DagsterInstance, store: JobStore) -> list[Action]:
    """A table held by a run that has ended (its worker was killed, say) goes to the next in line."""
    actions = []
    for claim in store.claims():
        if not claim.holding:
            continue
        run = instance.get_run_by_id(claim.run_id)
        if run is None or run.is_finished:
            hand_on(instance, store, claim.run_id)
            actions.append(
                Action(claim.job_id, "released", f"table {claim.target}: run {claim.run_id} ended")
            )
    return actions


def _work_done(settings: Settings, run_id: str) -> bool | None:
    """Has the attempt in `run_id` marked its target session done (framework/fence.py)? None if
    the target cannot be asked: nothing is judged lost on a guess, as with an unreachable broker."""
    try:
        return attempt_done(settings.target_database_url, run_id)
    except Exception as exc:
        logger.warning("could not ask the target whether run %s's work is done: %s", run_id, exc)
        return None


def stop_attempt(instance: dg.DagsterInstance, settings: Settings, run_id: str) -> str:
    """Stop what may still run of `run_id`'s attempt before its job moves on: its sessions in the
    target database ended, its Celery task revoked. What was done, for the action's detail.

    Best effort: a session that cannot be ended (the target unreachable from here) still holds the
    table's lock, and the job's next attempt waits for it.
    """
    url = settings.target_database_url
    stop = getattr(instance.run_launcher, "stop_attempt", None)
    try:
        ended = stop(run_id, url) if stop is not None else end_sessions(url, run_id)
    except Exception as exc:  # the broker or the target cannot be reached: the lock still fences
        logger.warning("could not stop the attempt of run %s: %s", run_id, exc)
        return f"could not stop run {run_id} ({type(exc).__name__}: {exc}); its table lock fences it"
    if not is_postgresql(url):
        return f"run {run_id} stopped (a SQLite target has no sessions to end)"
    return f"ended {len(ended)} session(s) of run {run_id}"


def _repair(
    instance: dg.DagsterInstance,
    store: JobStore,
    settings: Settings,
    record: JobRecord,
    run: dg.DagsterRun | None,
    finding: Finding,
) -> Action:
    verdict, detail = finding.verdict, finding.detail
    if finding.stop is not None:
        # Before anything lets the job move on: the next attempt must find it gone.
        detail = f"{detail}; {stop_attempt(instance, settings, finding.stop)}"
        if _work_done(settings, finding.stop) is not False:
            # It marked its work done while we looked (end_sessions leaves a done session): it is
            # recording its outcome; the job stays as it is.
            store.record_event(record.id, "recovered", reason=f"{detail}; its work is done: left alone")
            return Action(record.id, "left alone", f"{detail}; its work is done")
        if run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED):
            # An operator cancelled it and its attempt never confirmed: now stopped, it is cancelled,
            # never failed and retried.
            if run.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, message=RECOVERY_PREFIX + detail)
            with contextlib.suppress(JobStateError):
                events.cancelled(store, record.id, run.run_id, reason=f"cancelled; {detail}")
            hand_on(instance, store, run.run_id)
            return Action(record.id, "cancelled", detail)
    if verdict == Verdict.SUBMIT and run is not None:
        run_submitter(instance).submit_created(run)
        store.record_event(record.id, "recovered", reason=detail)
        return Action(record.id, "submitted", detail)
    if verdict == Verdict.RESEND and run is not None:
        store.record_event(record.id, "recovered", reason=detail)
        start(instance, run)
        return Action(record.id, "resent", detail)
    if run is not None and not run.is_finished:
        # Failed first: a task that turns up after all finds its run finished and does nothing.
        instance.report_run_failed(run, message=RECOVERY_PREFIX + detail)
    if run is not None:
        hand_on(instance, store, run.run_id)  # its table, if it held one, goes to the next in line
    if verdict == Verdict.FAIL_ATTEMPT:
        after = run_failed(store, store.require(record.id), f"WorkerLost: {detail}", settings)
        return Action(record.id, "recovered", f"{detail}; now {after.status.value}")
    store.record_event(record.id, "recovered", reason=detail)
    submit_new_run(instance, record, settings)
    return Action(record.id, "requeued", detail)
