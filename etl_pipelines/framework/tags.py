"""Run tags etl_pipelines owns (all under etl/), plus Dagster's priority tag it sets."""

import dagster as dg

from etl_pipelines.framework.queues import PRIORITY_TAG, QUEUE_TAG

JOB_ID_TAG = "etl/job_id"
JOB_TYPE_TAG = "etl/job_type"

__all__ = ["JOB_ID_TAG", "JOB_TYPE_TAG", "PRIORITY_TAG", "QUEUE_TAG", "job_id_of"]


def job_id_of(run: dg.DagsterRun) -> str:
    """A run's job id: its etl/job_id tag, else its root run's id (re-executions), else its own."""
    return run.tags.get(JOB_ID_TAG) or run.root_run_id or run.run_id
