"""Celery over Redis: the priority queues that warm workers take whole Dagster runs from.

Dagster's run queue (QueuedRunCoordinator) keeps the backlog, sorted by priority and limited per
target table; it lets at most `max_concurrent_runs` runs (the worker slots) into Celery. The run
launcher below sends each run to the Celery queue named by its etl/queue tag; a worker consumes
its queues strictly in priority order (kombu's `queue_order_strategy: priority`, no prefetch) and
executes the run in its own process with a pooled Dagster instance, instead of spawning a process
per run.
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
from etl_pipelines.framework.tags import QUEUE_TAG
from etl_pipelines.settings import Settings


class EtlCeleryRunLauncher(RunLauncher, ConfigurableClass):
    """Sends each run to the Celery queue of its etl/queue tag; workers execute it warm."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._app: Celery | None = None
        self._app_pid: int | None = None
        super().__init__()

    @property
    def app(self) -> Celery:
        # Created on first use and again after a fork: the daemon and webserver fork workers.
        if self._app is None or self._app_pid != os.getpid():
            self._app = make_celery(Settings.from_env())
            self._app_pid = os.getpid()
        return self._app

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> "EtlCeleryRunLauncher":
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        settings = Settings.from_env()
        queue = run.tags.get(QUEUE_TAG) or settings.queues[-1]
        # The task id is the run id, so health checks and revocation need no extra bookkeeping.
        self.app.send_task(EXECUTE_RUN_TASK, args=[run.run_id], queue=queue, task_id=run.run_id)
        self._instance.report_engine_event(f"Sent to Celery queue {queue!r}.", run, cls=self.__class__)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        self.app.control.revoke(run_id, terminate=True)
        self._instance.report_run_canceled(run, message="Revoked the run's Celery task.")
        return True

    def task_in_broker(self, run: dg.DagsterRun) -> bool:
        """Is the run's task still waiting in its Celery queue, or held by a worker (unacknowledged)?

        Recovery asks this of runs stuck in STARTING. A missing task is a plain False; an
        unreachable Redis raises (redis.ConnectionError), so "don't know" is never "gone".
        """
        settings = Settings.from_env()
        queue = run.tags.get(QUEUE_TAG) or settings.queues[-1]
        prefix = settings.redis_key_prefix
        client = redis.Redis.from_url(settings.require_redis())
        try:
            # kombu keeps one list per priority step (queue, queue\x06\x163, ...) and the
            # messages workers hold in the "unacked" hash until they acknowledge them (acks_late).
            keys = [prefix + queue] + [f"{prefix}{queue}\x06\x16{step}" for step in (3, 6, 9)]
            for key in keys:
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
        from etl_pipelines.framework.tags import job_id_of
        from etl_pipelines.store import JobStatus, JobStore
        from etl_pipelines.store.models import utcnow

        settings = Settings.from_env()
        record = JobStore(settings.database_url).get(job_id_of(run))
        if record is None or record.run_id != run.run_id:
            return False
        if record.status != JobStatus.STARTED:
            # Queued: the run is setting up its op (ms); done: the run is finishing.
            return record.status in (JobStatus.QUEUED, *(s for s in JobStatus if s.is_final))
        beat = record.heartbeat_at
        return beat is not None and (utcnow() - beat).total_seconds() < settings.heartbeat_timeout


def _task_id(raw: bytes, wrapped: bool = False) -> str | None:
    """The Celery task id of a kombu message as Redis stores it (unacked entries are wrapped)."""
    try:
        message = json.loads(raw)
        if wrapped:
            message = message[0]
        return message["headers"]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
