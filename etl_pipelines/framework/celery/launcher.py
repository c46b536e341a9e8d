"""Celery over Redis (or, embedded, a SQLite file): the priority queues warm workers take runs from.

The run coordinator (EtlRunCoordinator) hands each admitted run to `enqueue` the moment it is
submitted; the run stays QUEUED until a worker takes it. The queues hold the backlog: a worker
consumes its queues strictly in priority order (kombu's `queue_order_strategy: priority`, no
prefetch) and executes the run in its own process with a pooled Dagster instance, instead of
spawning a process per run. The embedded default's broker is kombu's SQLAlchemy transport on a
SQLite file in DAGSTER_HOME (framework/celery/app.py), so it needs no Redis.
"""

import contextlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import dagster as dg
import redis
import sqlalchemy as sa
from celery import Celery

from etl_pipelines.framework._dagster_internal import (
    CheckRunHealthResult,
    ConfigurableClass,
    ConfigurableClassData,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from etl_pipelines.framework.celery.app import make_celery, sql_broker_database
from etl_pipelines.framework.celery.task import EXECUTE_RUN_TASK
from etl_pipelines.framework.fence import end_sessions, is_postgresql
from etl_pipelines.framework.launch import hand_on
from etl_pipelines.framework.tags import QUEUE_TAG, job_id_of
from etl_pipelines.lifecycle import admission, events
from etl_pipelines.lifecycle.diagnosis import BEATS_MISSED, run_alive
from etl_pipelines.process_cache import ProcessCache
from etl_pipelines.settings import DEFAULT_QUEUES, Settings
from etl_pipelines.store import JobStateError, JobStore
from etl_pipelines.store.models import utcnow

# How long terminate() waits for a revoked attempt to report that it stopped.
STOP_WAIT_SECONDS = 5.0


class EtlCeleryRunLauncher(RunLauncher, ConfigurableClass):
    """Sends each run to the Celery queue of its etl/queue tag; workers execute it warm.

    Configured in dagster.yaml (`config_type`), like dagster-celery's CeleryRunLauncher: the
    broker (`redis_url`, or `broker_url`) and key prefix must be the ones the deployment's
    `etl-jobs worker`s use (ETL_REDIS_URL, ETL_REDIS_KEY_PREFIX), the job table and heartbeat the
    ones its jobs write.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        job_database_url: str = "",
        redis_key_prefix: str = "",
        broker_url: str | None = None,
        default_queue: str = DEFAULT_QUEUES[-1],
        heartbeat_seconds: float | None = None,
        inst_data: ConfigurableClassData | None = None,
    ):
        if heartbeat_seconds is None:
            # Not in dagster.yaml: the interval the deployment's workers beat at, as recovery reads it.
            heartbeat_seconds = Settings.from_env().heartbeat_seconds
        if heartbeat_seconds <= 0:
            raise ValueError(f"heartbeat_seconds must be positive; got {heartbeat_seconds!r}")
        if not (broker_url or redis_url):
            raise ValueError("EtlCeleryRunLauncher needs redis_url or broker_url (the workers' broker)")
        if broker_url and redis_url and broker_url != redis_url:
            raise ValueError(f"redis_url {redis_url!r} and broker_url {broker_url!r} name two brokers")
        if not job_database_url:
            raise ValueError("EtlCeleryRunLauncher needs job_database_url (the job table)")
        self._inst_data = inst_data
        self.broker_url: str = broker_url or redis_url or ""
        # None for a SQL broker: its queries go to kombu's tables (`_sql_waiting`), not to Redis.
        self._sql_broker = sql_broker_database(self.broker_url)
        self.redis_url = None if self._sql_broker else self.broker_url
        self.job_database_url = job_database_url
        self.redis_key_prefix = redis_key_prefix
        self.default_queue = default_queue
        self.heartbeat_seconds = heartbeat_seconds
        self._app: Celery | None = None
        self._app_pid: int | None = None
        super().__init__()

    @property
    def app(self) -> Celery:
        # Created on first use and again after a fork: the daemon and webserver fork workers.
        if self._app is None or self._app_pid != os.getpid():
            self._app = make_celery(
                self.broker_url, key_prefix=self.redis_key_prefix, default_queue=self.default_queue
            )
            self._app_pid = os.getpid()
        return self._app

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "redis_url": dg.Field(
                dg.StringSource,
                is_required=False,
                description=(
                    "Redis URL of the Celery broker and result backend, e.g. redis://host:6379/0: "
                    "the one the workers use (their ETL_REDIS_URL). Required unless broker_url is given."
                ),
            ),
            "broker_url": dg.Field(
                dg.StringSource,
                is_required=False,
                description=(
                    "Celery broker URL instead of redis_url: redis://… or a SQL broker "
                    "(sqla+sqlite:///path/broker.sqlite, results in the same database), the one the "
                    "workers use (without ETL_REDIS_URL: broker.sqlite in their DAGSTER_HOME)."
                ),
            ),
            "redis_key_prefix": dg.Field(
                dg.StringSource,
                is_required=False,
                default_value="",
                description=(
                    "Prefix of every Redis key Celery writes, for several deployments on one Redis: "
                    "the one the workers use (their ETL_REDIS_KEY_PREFIX). Default: none."
                ),
            ),
            "default_queue": dg.Field(
                dg.StringSource,
                is_required=False,
                default_value=DEFAULT_QUEUES[-1],
                description=(
                    "Celery queue of a run without an etl/queue tag (every job run gets one when it "
                    f"is submitted): the last of ETL_QUEUES. Default: {DEFAULT_QUEUES[-1]!r}."
                ),
            ),
            "job_database_url": dg.Field(
                dg.StringSource,
                description=(
                    "SQLAlchemy URL of the database holding the etl_jobs table (ETL_DATABASE_URL). "
                    "When the result backend no longer knows a run's task (Redis flushed), the "
                    "health check asks it whether the run's attempt still beats."
                ),
            ),
            "heartbeat_seconds": dg.Field(
                float,
                is_required=False,
                description=(
                    "How often running jobs write their heartbeat: the workers' ETL_HEARTBEAT_SECONDS. "
                    f"An attempt {BEATS_MISSED} beats late is not alive. Default: ETL_HEARTBEAT_SECONDS "
                    "of the process that loads the instance (10)."
                ),
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> "EtlCeleryRunLauncher":
        return cls(inst_data=inst_data, **config_value)

    def _queue(self, run: dg.DagsterRun) -> str:
        return run.tags.get(QUEUE_TAG) or self.default_queue

    def enqueue(self, run: dg.DagsterRun) -> None:
        """Send a submitted run's task to the Celery queue of its etl/queue tag (EtlRunCoordinator)."""
        # The task id is the run id, so health checks and revocation need no extra bookkeeping.
        self.app.send_task(EXECUTE_RUN_TASK, args=[run.run_id], queue=self._queue(run), task_id=run.run_id)

    def launch_run(self, context: LaunchRunContext) -> None:
        # Only for a caller that launches directly (instance.launch_run): the run is STARTING.
        self.enqueue(context.dagster_run)

    def withdraw(self, run: dg.DagsterRun) -> bool:
        """Take a run's waiting task out of its Celery queue: True if it was there."""
        if self._sql_broker:
            ids = _sql_waiting(self._sql_broker, self._queue(run), run.run_id)
            with _sql_engine(self._sql_broker).begin() as connection:
                # Still visible: a worker that took it meanwhile keeps it (and finds the run cancelled).
                deleted = connection.execute(
                    sa.delete(_MESSAGE).where(_MESSAGE.c.id.in_(ids), _MESSAGE.c.visible == sa.true())
                )
            return deleted.rowcount > 0
        client = redis.Redis.from_url(self.broker_url)
        try:
            removed = 0
            for key in self._queue_keys(run):
                for raw in client.lrange(key, 0, -1):
                    if _task_id(raw) == run.run_id:
                        removed += int(client.lrem(key, 0, raw))  # type: ignore[arg-type]
            return removed > 0
        finally:
            client.close()

    def stop_attempt(self, run_id: str, target_database_url: str | None = None) -> list[int]:
        """Stop what may still run of `run_id`'s attempt: its sessions in the target database are
        ended, their table locks with them (framework/fence.py), and its Celery task is revoked
        (the pool process running it gets SIGTERM, which a paused process takes when it resumes;
        Dagster turns it into an interrupt of the op). The pids of the sessions ended; raises if
        either could not be done (the other is done all the same)."""
        # The target is the workers' setting, not the instance's: read where it is needed.
        url = target_database_url or Settings.from_env().target_database_url
        try:
            return end_sessions(url, run_id)
        finally:
            self.app.control.revoke(run_id, terminate=True)

    def terminate(self, run_id: str) -> bool:
        """Cancel a run, reported CANCELED only once it can do nothing more.

        A run no worker took (its task taken out of the queue, or waiting in its table's line) is
        cancelled at once. Otherwise its task is revoked (its process gets SIGTERM) and its
        sessions in the target database are ended; the attempt then reports CANCELED itself as it
        stops (Dagster does, for a CANCELING run it interrupts). If it does not within
        STOP_WAIT_SECONDS (a paused or unreachable process), a PostgreSQL target's run is reported
        CANCELED all the same, saying so: its sessions are gone and it can never reconnect (the
        fence). Without that (SQLite, or sessions that could not be ended) it stays CANCELING until
        the attempt stops, or Dagster's run monitoring gives up on it.
        """
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        store = JobStore(self.job_database_url)
        self._instance.report_run_canceling(run)
        if run.status == dg.DagsterRunStatus.QUEUED and (
            self.withdraw(run) or admission.waiting(store, run_id)
        ):
            # Never taken by a worker; one that takes it after all finds it CANCELING and skips it.
            self.app.control.revoke(run_id)
            self._instance.report_run_canceled(
                run, message="Cancelled before a worker took it: its Celery task was taken out of the queue."
            )
        elif not self._stop_and_wait(run):
            return True  # CANCELING: reported CANCELED when the attempt stops
        # Its job is cancelled, not failed and retried (the op records the same if it sees the
        # cancellation first), and its process may have been stopped mid-attempt: nobody else
        # hands its table on (hand_on is idempotent if the op did).
        with contextlib.suppress(JobStateError):
            events.cancelled(store, job_id_of(run), run_id, reason="its run was terminated")
        hand_on(self._instance, store, run_id)
        return True

    def _stop_and_wait(self, run: dg.DagsterRun) -> bool:
        """Stop a run's attempt; True once the run is finished or known unable to do more."""
        url = Settings.from_env().target_database_url  # the workers' target, as they read it
        try:
            ended = self.stop_attempt(run.run_id, url)
        except Exception as exc:  # the target database (or the broker) cannot be reached
            self._instance.report_engine_event(
                f"Could not stop the run's attempt ({type(exc).__name__}: {exc}); the run stays "
                "CANCELING until its attempt is known to have stopped.",
                run,
            )
            return False
        fenced = is_postgresql(url)
        stopped = (
            f"Revoked its Celery task (its process is sent SIGTERM) and ended its {len(ended)} "
            "session(s) in the target database: it can no longer change it."
            if fenced
            else "Revoked its Celery task: its process is sent SIGTERM."
        )
        self._instance.report_engine_event(stopped, run)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while time.monotonic() < deadline:
            now = self._instance.get_run_by_id(run.run_id)
            if now is None or now.is_finished:
                return True  # the attempt stopped and said so
            time.sleep(0.1)
        if not fenced:
            self._instance.report_engine_event(
                f"Its process has not confirmed it stopped within {STOP_WAIT_SECONDS:g} s: the run "
                "stays CANCELING until it does.",
                run,
            )
            return False
        self._instance.report_run_canceled(
            run,
            message=f"Its process has not confirmed it stopped within {STOP_WAIT_SECONDS:g} s (paused "
            f"or unreachable?), but it is fenced off the target: {stopped}",
        )
        return True

    def _queue_keys(self, run: dg.DagsterRun) -> list[str]:
        # kombu keeps one Redis list per priority step of a queue: queue, queue\x06\x163, ...
        queue = self.redis_key_prefix + self._queue(run)
        return [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]

    def task_in_broker(self, run: dg.DagsterRun) -> bool:
        """Is the run's task still waiting in its Celery queue, or held by a worker (unacknowledged)?

        Recovery asks this of QUEUED runs that should be in the broker. A missing task is a plain False; an
        unreachable Redis raises (redis.ConnectionError), so "don't know" is never "gone".

        A SQL broker keeps a message a worker took as an invisible row, acknowledged or not, and never
        redelivers it: only a waiting (visible) message counts. A worker marks the run STARTING the
        moment it takes it, so a run still QUEUED or STARTING past recovery's grace with no waiting
        message lost its worker. An unreadable database raises (sqlalchemy's OperationalError).
        """
        if self._sql_broker:
            return bool(_sql_waiting(self._sql_broker, self._queue(run), run.run_id))
        client = redis.Redis.from_url(self.broker_url)
        prefix = self.redis_key_prefix
        try:
            # The queue's lists, and the messages workers hold in the "unacked" hash until they
            # acknowledge them (acks_late).
            for key in self._queue_keys(run):
                if any(_task_id(raw) == run.run_id for raw in client.lrange(key, 0, -1)):
                    return True
            return any(_task_id(raw, wrapped=True) == run.run_id for raw in client.hvals(prefix + "unacked"))
        finally:
            client.close()

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        state = self.app.AsyncResult(run.run_id).state
        if state == "SUCCESS":
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        if state in ("FAILURE", "REVOKED"):
            return CheckRunHealthResult(WorkerStatus.FAILED, f"Celery task {state}.")
        if state == "STARTED":
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        # PENDING: the result backend does not know the task (Redis flushed or failed over while
        # the run goes on). Dagster's run monitoring fails a run on anything but RUNNING, so ask
        # the job table: an attempt of this run that still beats is running.
        if self._attempt_alive(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"Celery task state {state}, no heartbeat.")

    def _attempt_alive(self, run: dg.DagsterRun) -> bool:
        record = JobStore(self.job_database_url).get(job_id_of(run))
        return run_alive(record, run.run_id, now=utcnow(), heartbeat_seconds=self.heartbeat_seconds)


class EmbeddedCeleryRunLauncher(EtlCeleryRunLauncher):
    """The embedded default's launcher: broker, key prefix and job table are the workers' own settings.

    The process that loads the instance reads them as `etl-jobs worker` does (Settings: ETL_REDIS_URL
    or broker.sqlite in DAGSTER_HOME, ETL_DATABASE_URL or etl.sqlite there), so the dagster.yaml
    copied into ./.dagster_home names no path and no variable that may be unset.
    """

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        own = ("redis_url", "broker_url", "redis_key_prefix", "job_database_url")
        fields = {name: f for name, f in super().config_type().items() if name not in own}
        fields["default_queue"] = dg.Field(
            dg.StringSource,
            is_required=False,
            description="Celery queue of a run without an etl/queue tag. Default: the last of ETL_QUEUES.",
        )
        return fields

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> "EmbeddedCeleryRunLauncher":
        settings = Settings.from_env()
        return cls(
            inst_data=inst_data,
            broker_url=settings.broker_url,
            redis_key_prefix=settings.redis_key_prefix,
            job_database_url=settings.database_url,
            **{"default_queue": settings.queues[-1], **config_value},
        )


# kombu's SQLAlchemy transport's tables (kombu/transport/sqlalchemy/models.py, default names).
_QUEUE = sa.table("kombu_queue", sa.column("id"), sa.column("name"))
_MESSAGE = sa.table(
    "kombu_message", sa.column("id"), sa.column("queue_id"), sa.column("visible"), sa.column("payload")
)
_sql_engines: ProcessCache[sa.Engine] = ProcessCache(close=lambda engine: engine.dispose())


def _sql_engine(database: str) -> sa.Engine:
    return _sql_engines.get(database, lambda: sa.create_engine(database))


def _sql_waiting(database: str, queue: str, task_id: str) -> list[int]:
    """Ids of the messages waiting (visible) in a SQL broker's `queue` for the task `task_id`."""
    with _sql_engine(database).connect() as connection:
        if not sa.inspect(connection).has_table("kombu_message"):
            return []  # nothing was ever sent or consumed
        rows = connection.execute(
            sa.select(_MESSAGE.c.id, _MESSAGE.c.payload)
            .join_from(_MESSAGE, _QUEUE, _MESSAGE.c.queue_id == _QUEUE.c.id)
            .where(
                _QUEUE.c.name == queue,
                _MESSAGE.c.visible == sa.true(),
                # The id is in the payload's JSON text; the parsed header decides.
                _MESSAGE.c.payload.contains(task_id, autoescape=True),
            )
        ).all()
    return [row.id for row in rows if _task_id(row.payload) == task_id]


def _task_id(raw: bytes | str, wrapped: bool = False) -> str | None:
    """The Celery task id of a kombu message as Redis or kombu_message stores it (Redis's unacked
    entries are wrapped)."""
    try:
        message = json.loads(raw)
        if wrapped:
            message = message[0]
        return message["headers"]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
