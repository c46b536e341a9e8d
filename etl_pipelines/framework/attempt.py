"""One attempt of a job, as its op runs it: record, heartbeat, handle(), outcome."""

import contextlib
import functools
import json
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import dagster as dg
import sqlalchemy as sa

from etl_pipelines.errors import JobTimeoutError, NonRetryableError
from etl_pipelines.framework.base import BaseJob, JobContext
from etl_pipelines.framework.fence import LEASE_BEATS, AttemptSession, application_name, is_postgresql
from etl_pipelines.framework.launch import hand_on
from etl_pipelines.framework.retries import schedule_due_retry
from etl_pipelines.framework.tags import QUEUE_TAG, job_id_of
from etl_pipelines.lifecycle import RetrySchedule, admission, events
from etl_pipelines.lifecycle.bounds import bounded_result, is_truncated, scrub_error
from etl_pipelines.lifecycle.progress import Progress
from etl_pipelines.resources import JobStoreResource, TargetDatabase
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStore
from etl_pipelines.store.resilience import is_transient

logger = logging.getLogger(__name__)


class JobLog:
    """The op's Dagster logger as handle() gets it (ctx.log): a line that cannot be written (Dagster's
    storage unreachable: the event write raises) goes to the worker's own log instead, and never
    fails the job. A job logs after its commit too, and an attempt that fails after its work is
    committed would be run again."""

    def __init__(self, log: Any):
        self._log = log

    def _emit(self, level: str, message: Any, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self._log, level)(message, *args, **kwargs)
        except Exception:
            logger.warning("could not write a log line to the Dagster run: %s", message, exc_info=True)

    def debug(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit("debug", message, *args, **kwargs)

    def info(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit("info", message, *args, **kwargs)

    def warning(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit("warning", message, *args, **kwargs)

    def error(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit("error", message, *args, **kwargs)

    def exception(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit("exception", message, *args, **kwargs)

    def critical(self, message: Any, *args: Any, **kwargs: Any) -> None:
        self._emit("critical", message, *args, **kwargs)


class Heartbeat:
    """While in the block, write the job's heartbeat every `interval` s from a background thread.

    The attempt gives its work up (`on_lost`, once: its fenced session stops, framework/fence.py)
    when a beat is refused (the job is no longer on this run: recovery gave up on it), or when no
    beat could be written for LEASE_BEATS intervals (the job table unreachable from here): the
    attempt stops itself before recovery, which waits BEATS_MISSED beats, may judge it lost and
    start its retry.
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        run_id: str,
        interval: float,
        on_lost: Callable[[str], None] | None = None,
        progress: Progress | None = None,
    ):
        # A beat lost to a database blip is not retried for long: the next one is due anyway, and
        # the attempt's end must not wait for a beat stuck in retries.
        self._beat = functools.partial(store.heartbeat, job_id, run_id, retry_seconds=interval)
        self._job_id = job_id
        self._progress = progress
        self._on_lost = on_lost
        self.lost = False
        self._interval = interval
        self._last_beat = time.monotonic()  # started: events.started wrote the first beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True),
            # Apart from the beats: a beat hanging on a silent network must not hold the lease.
            threading.Thread(target=self._watch, name=f"lease-{job_id}", daemon=True),
        ]

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                report = None if self._progress is None else self._progress.unwritten()
                if self._beat(progress=None if report is None else report[0]):
                    if report is not None and self._progress is not None:
                        self._progress.written(report[1])
                    self._last_beat = time.monotonic()
                else:
                    # Recovery judged this attempt lost and moved the job on: our outcome will be
                    # refused (JobStateError), the job's record stays what recovery decided, and
                    # the work stops now rather than beside the job's next attempt.
                    self._give_up(f"job {self._job_id} is no longer on this run")
            except Exception:  # a missed beat is retried at the next interval
                logger.warning("heartbeat of a running job failed", exc_info=True)

    def _watch(self) -> None:
        lease = LEASE_BEATS * self._interval
        while not self._stop.wait(self._interval / 4):
            silent = time.monotonic() - self._last_beat
            if silent > lease:
                self._give_up(
                    f"no heartbeat of job {self._job_id} could be written for {silent:.1f} s (the job "
                    "table is unreachable from this worker): the attempt gives its work up before "
                    "recovery may start its retry"
                )

    def _give_up(self, reason: str) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        logger.warning("%s; stopping its work, its outcome will not be recorded as a success", reason)
        if self._on_lost is not None:
            self._on_lost(reason)

    def __enter__(self) -> "Heartbeat":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            # Bounded: a beat stuck on a silent network must not hold the attempt (daemon threads).
            thread.join(timeout=self._interval * 2)


def run_attempt(
    context: dg.OpExecutionContext,
    job: BaseJob,
    job_store: JobStoreResource,
    database: TargetDatabase,
) -> Any:
    """Run one attempt of `job`, keeping its record current; on failure, schedule the next attempt."""
    job_cls = type(job)
    settings = Settings.from_env()  # the run worker's edge: read once per attempt, passed down
    store = job_store.store()
    run = context.run
    job_id = job_id_of(run)
    schedule = job_cls.retry_schedule(settings)
    # Runs not made by dispatch() (dagster job execute, say) get their record here.
    queue = run.tags.get(QUEUE_TAG, job_cls.queue)
    events.bootstrap(store, job_cls.new_job(job_id, queue, job.model_dump(mode="json"), settings), run.run_id)
    # JobStateError unless this run is the job's queued run: then nothing runs.
    record = events.started(store, job_id, run.run_id)
    name = application_name(run.run_id, job_cls.job_type())
    # The attempt's target work goes through one fenced session, made on first use (fence.py).
    target_url = settings.target_database_url
    session = AttemptSession(target_url, name, run.run_id) if is_postgresql(target_url) else None
    ctx = JobContext(
        job_id=job_id,
        run_id=run.run_id,
        retry_count=record.retry_count,
        log=JobLog(context.log),
        database=database,
        settings=settings,
        timeout=job_cls.timeout(settings),
        session=session,
        application_name=name,
        progress=Progress(log=JobLog(context.log).info),
    )
    try:
        return _attempt(context, job, store, record, ctx, schedule)
    finally:
        if session is not None:
            session.close()  # its table lock goes with it, before the table is handed on
        # The attempt is over: the next run waiting for its table starts now, not when this run
        # has finished its bookkeeping.
        hand_on(context.instance, store, run.run_id)


def _attempt(
    context: dg.OpExecutionContext,
    job: BaseJob,
    store: JobStore,
    record: JobRecord,
    ctx: JobContext,
    schedule: RetrySchedule,
) -> Any:
    settings, run, job_id, session = ctx.settings, context.run, ctx.job_id, ctx.session
    on_lost = None if session is None else session.lose
    try:
        with Heartbeat(
            store, job_id, run.run_id, settings.heartbeat_seconds, on_lost=on_lost, progress=ctx.progress
        ):
            job.validate_input(settings)
            target = job.target()
            try:
                if session is not None and target is not None:
                    # Before any work: the table's previous attempt, if recovery gave up on it
                    # while it still ran, must be gone (its session ended) before this one works.
                    session.lock(admission.table_key(target, settings.target_dialect), context.log.warning)
                output = job.handle(ctx)
                if session is not None:
                    # Its work is committed: recovery must not run it again while this attempt
                    # records its outcome (through a job table outage, say). First thing: nothing
                    # may stand between the work's commit and this mark.
                    session.mark_done()
                final = ctx.progress.unwritten()
                if final is not None:  # the last report, which no beat may have carried
                    with contextlib.suppress(Exception):  # one try: the outcome is what matters
                        store.heartbeat(job_id, run.run_id, retry_seconds=0, progress=final[0])
            except sa.exc.StatementError as exc:  # DBAPIError, or FenceLost wrapped by SQLAlchemy
                fenced = None if session is None else session.fence_error(exc)
                if fenced is not None:
                    raise fenced from exc
                if isinstance(exc, sa.exc.DBAPIError):
                    raise classify_database_error(exc, ctx.timeout) from exc
                raise
            try:
                result = to_json(output)
            except (TypeError, ValueError) as exc:
                raise JobResultError(f"the job's result cannot be stored as JSON: {exc}") from exc
    except Exception as exc:
        if _cancelling(context):
            # Stopped because its run is being cancelled (UI, GraphQL, etl-jobs cancel): not a
            # failure to retry.
            with contextlib.suppress(JobStateError):  # the canceller recorded it first
                events.cancelled(store, job_id, run.run_id, reason=f"cancelled while running ({exc})")
            raise
        # The wait for a retry lives in the job table, not in this process: the run ends here,
        # the worker slot is free, and the run is re-executed when it is due (framework.retries).
        # Only while the job is still this attempt: if recovery declared the worker lost
        # meanwhile, that decision stands (JobStateError fails this run instead).
        after = events.attempt_failed(
            store,
            record,  # as this attempt started it: a job recovery took over meanwhile is not ours
            run.run_id,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            schedule=schedule,
            # Bad parameters or a failed check do not get better by waiting: fail at once.
            retryable=not isinstance(exc, NonRetryableError),
        )
        if after.next_retry_at is not None:
            context.log.warning(
                f"attempt {record.retry_count + 1} failed ({after.error}); retry {after.retry_count + 1} "
                f"of {after.max_retries} due at {after.next_retry_at:%Y-%m-%d %H:%M:%S} UTC"
            )
            # A worker starts the retry at its due time; the sensor if that timer is lost.
            schedule_due_retry(context.instance, after)
        raise
    # A result past ETL_MAX_RESULT_BYTES is kept as a summary, in the job table and on the run's
    # page alike (a 50 MB table in the event log would stop the UI from loading the run).
    result = bounded_result(result, settings.max_result_bytes)
    _record_completion(store, job_id, run.run_id, result, done=session is not None and session.is_done)
    shown = {} if is_truncated(result) else job.result_metadata(result)
    context.add_output_metadata({"job_id": job_id, "result": result_metadata(result), **shown})
    return result


def _record_completion(store: JobStore, job_id: str, run_id: str, result: Any, *, done: bool) -> None:
    """events.completed, tried through a job table outage. Once the attempt's work is marked done
    (its target session renamed, fence.py), it never gives up while the outage lasts: giving up
    would close that session, and recovery would then run the committed work again."""
    while True:
        try:
            events.completed(store, job_id, run_id, result)
            return
        except Exception as exc:
            if not done or not is_transient(exc):
                raise
            logger.warning(
                "job %s: its work is done but its completion cannot be written yet (%s); trying on",
                job_id,
                exc,
            )


def _cancelling(context: dg.OpExecutionContext) -> bool:
    run = context.instance.get_run_by_id(context.run.run_id)
    return run is not None and run.status in (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)


class JobResultError(NonRetryableError):
    """handle() returned something the job table cannot hold; running it again would not help."""


class DatabaseInputError(NonRetryableError):
    """PostgreSQL rejected the job's statements for good (bad data, a violated constraint,
    an unknown table or column): waiting will not change the answer."""


# SQLSTATE classes that no retry can fix: 22 data exception, 23 integrity constraint violation,
# 42 syntax error or access rule violation (undefined table/column, insufficient privilege).
_PERMANENT_SQLSTATE_CLASSES = ("22", "23", "42")


def classify_database_error(exc: sa.exc.DBAPIError, timeout: float) -> Exception:
    """The error to record for a database failure: a timeout, a permanent error, or `exc` itself."""
    code = getattr(exc.orig, "pgcode", None) or ""
    if code == "57014" and "statement timeout" in str(exc.orig):
        return JobTimeoutError(f"a statement ran past the job's timeout of {timeout:g} s and was cancelled")
    if code[:2] in _PERMANENT_SQLSTATE_CLASSES:
        # PostgreSQL's DETAIL may quote row values: scrubbed here, before Dagster's event log.
        return DatabaseInputError(scrub_error(f"{type(exc.orig).__name__}: {str(exc.orig).strip()}"))
    return exc


def to_json(value: Any) -> Any:
    """`value` as strict JSON data: NaN and infinities become null, unknown types are an error."""
    return json.loads(json.dumps(_finite(value), default=_json_default, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars from pandas
        return _finite(value.item())
    raise TypeError(f"job result is not JSON-serialisable: {type(value).__name__}")


def result_metadata(result: Any) -> dg.MetadataValue:
    """How a result is shown in the Dagster UI."""
    if isinstance(result, bool) or result is None:
        return dg.MetadataValue.text(json.dumps(result))
    if isinstance(result, int):
        return dg.MetadataValue.int(result)
    if isinstance(result, float):
        return dg.MetadataValue.float(result)
    if isinstance(result, str):
        return dg.MetadataValue.text(result)
    return dg.MetadataValue.json(result)
