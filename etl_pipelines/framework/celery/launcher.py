"""Celery over Redis: the priority queues that warm workers take whole Dagster runs from.

The run coordinator (EtlRunCoordinator) hands each admitted run to `enqueue` the moment it is
submitted; the run stays QUEUED until a worker takes it. The queues hold the backlog: a worker
consumes its queues strictly in priority order (kombu's `queue_order_strategy: priority`, no
prefetch) and executes the run in its own process with a pooled Dagster instance, instead of
spawning a process per run.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

import dagster as dg
import redis
from celery import Celery

from etl_pipelines.framework._dagster_internal import (
    CheckRunHealthResult,
    ConfigurableClass,
    ConfigurableClassData,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from etl_pipelines.framework.celery.app import make_celery
from etl_pipelines.framework.celery.task import EXECUTE_RUN_TASK
from etl_pipelines.framework.launch import hand_on
from etl_pipelines.framework.tags import QUEUE_TAG, job_id_of
from etl_pipelines.lifecycle.diagnosis import BEATS_MISSED, run_alive
from etl_pipelines.settings import DEFAULT_QUEUES, Settings
from etl_pipelines.store import JobStore
from etl_pipelines.store.models import utcnow


class EtlCeleryRunLauncher(RunLauncher, ConfigurableClass):
    """Sends each run to the Celery queue of its etl/queue tag; workers execute it warm.

    Configured in dagster.yaml (`config_type`), like dagster-celery's CeleryRunLauncher: the
    Redis URL and key prefix must be the ones the deployment's `etl-jobs worker`s use
    (ETL_REDIS_URL, ETL_REDIS_KEY_PREFIX), the job table and heartbeat the ones its jobs write.
    """

    def __init__(
        self,
        redis_url: str,
        job_database_url: str,
        redis_key_prefix: str = "",
        default_queue: str = DEFAULT_QUEUES[-1],
        heartbeat_seconds: float | None = None,
        inst_data: ConfigurableClassData | None = None,
    ):
        if heartbeat_seconds is None:
            # Not in dagster.yaml: the interval the deployment's workers beat at, as recovery reads it.
            heartbeat_seconds = Settings.from_env().heartbeat_seconds
        if heartbeat_seconds <= 0:
            raise ValueError(f"heartbeat_seconds must be positive; got {heartbeat_seconds!r}")
        self._inst_data = inst_data
        self.redis_url = redis_url
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
                self.redis_url, key_prefix=self.redis_key_prefix, default_queue=self.default_queue
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
                description=(
                    "Redis URL of the Celery broker and result backend, e.g. redis://host:6379/0: "
                    "the one the workers use (their ETL_REDIS_URL)."
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
        client = redis.Redis.from_url(self.redis_url)
        try:
            removed = 0
            for key in self._queue_keys(run):
                for raw in client.lrange(key, 0, -1):
                    if _task_id(raw) == run.run_id:
                        removed += int(client.lrem(key, 0, raw))  # type: ignore[arg-type]
            return removed > 0
        finally:
            client.close()

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        self.app.control.revoke(run_id, terminate=True)
        self._instance.report_run_canceled(run, message="Revoked the run's Celery task.")
        # Its process was stopped mid-attempt: nobody else hands its table on.
        hand_on(self._instance, JobStore(self.job_database_url), run_id)
        return True

    def _queue_keys(self, run: dg.DagsterRun) -> list[str]:
        # kombu keeps one Redis list per priority step of a queue: queue, queue\x06\x163, ...
        queue = self.redis_key_prefix + self._queue(run)
        return [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]

    def task_in_broker(self, run: dg.DagsterRun) -> bool:
        """Is the run's task still waiting in its Celery queue, or held by a worker (unacknowledged)?

        Recovery asks this of QUEUED runs that should be in the broker. A missing task is a plain False; an
        unreachable Redis raises (redis.ConnectionError), so "don't know" is never "gone".
        """
        client = redis.Redis.from_url(self.redis_url)
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


def _task_id(raw: bytes | str, wrapped: bool = False) -> str | None:
    """The Celery task id of a kombu message as Redis stores it (unacked entries are wrapped)."""
    try:
        message = json.loads(raw)
        if wrapped:
            message = message[0]
        return message["headers"]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
