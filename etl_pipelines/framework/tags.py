"""Run tags etl_pipelines owns (all under etl/), plus the Dagster tags it sets from them."""

import dagster as dg

from etl_pipelines.framework.base import BaseJob
from etl_pipelines.lifecycle.queues import priority
from etl_pipelines.settings import Settings

# Dagster's QueuedRunCoordinator dequeues runs by this int tag, highest first, FIFO among equals.
PRIORITY_TAG = "dagster/priority"
QUEUE_TAG = "etl/queue"
JOB_ID_TAG = "etl/job_id"
JOB_TYPE_TAG = "etl/job_type"
# The table a job touches; dagster.yaml limits it to one run per unique value.
TARGET_TAG = "etl/target"
# Dagster's run monitoring fails a run still going after this many seconds.
MAX_RUNTIME_TAG = "dagster/max_runtime"
# Where Dagster's run monitoring reads a run's limit: the first tag present (even empty) wins.
RUNTIME_TAGS = (MAX_RUNTIME_TAG, "dagster/max_runtime_seconds")

__all__ = [
    "JOB_ID_TAG",
    "JOB_TYPE_TAG",
    "MAX_RUNTIME_TAG",
    "PRIORITY_TAG",
    "QUEUE_TAG",
    "RUNTIME_TAGS",
    "TARGET_TAG",
    "job_id_of",
    "run_tags",
]


def job_id_of(run: dg.DagsterRun) -> str:
    """A run's job id: its etl/job_id tag, else its root run's id (re-executions), else its own."""
    return run.tags.get(JOB_ID_TAG) or run.root_run_id or run.run_id


def run_tags(job: BaseJob | None, job_cls: type[BaseJob], queue: str, settings: Settings) -> dict[str, str]:
    """Queue, priority, target and run time limit of a run of `job` (None: parameters unknown)."""
    tags = {QUEUE_TAG: queue, PRIORITY_TAG: str(priority(queue, settings.queues))}
    attempt = job_cls.attempt_limit(settings)
    if attempt:
        # A run is one attempt (retries are new runs): its limit plus start-up.
        tags[MAX_RUNTIME_TAG] = str(int(attempt + 60))
    target = job.target() if job is not None else None
    if target:
        tags[TARGET_TAG] = target
    return tags
