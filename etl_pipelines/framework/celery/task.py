"""The Celery tasks a worker runs: execute one submitted Dagster run in this warm process; start a
job's retry when it is due."""

import logging
from typing import Any

import dagster as dg

from etl_pipelines.framework._dagster_internal import execute_run_here

EXECUTE_RUN_TASK = "etl_pipelines.execute_run"
START_DUE_RETRY_TASK = "etl_pipelines.start_due_retry"
logger = logging.getLogger(__name__)


def execute_run(task: Any, run_id: str) -> str:
    """Celery task: take a QUEUED run (it becomes STARTING) and execute it here, once; a run that
    is cancelled, finished or already taken (a redelivered message) is left alone."""
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.framework.launch import hand_on
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    instance = get_instance()
    run = instance.get_run_by_id(run_id)
    if run is None:
        logger.warning("run %s does not exist; dropping its task", run_id)
        return "missing"
    if run.status == dg.DagsterRunStatus.QUEUED:
        starting = dg.DagsterEvent(
            event_type_value=dg.DagsterEventType.RUN_STARTING.value, job_name=run.job_name
        )
        instance.report_dagster_event(starting, run_id=run_id)
    elif run.status != dg.DagsterRunStatus.STARTING:
        logger.info("run %s is %s; not executing it again", run_id, run.status.value)
        return f"skipped: {run.status.value}"
    try:
        code = execute_run_here(instance, run_id)
    finally:
        # The op hands its table on when its attempt ends; this covers a run that ended before its
        # op did (bad config, a failure setting up). Nothing to do when the op did it already.
        hand_on(instance, JobStore(Settings.from_env().database_url), run_id)
    return "failure" if code else "success"


def start_due_retry(job_id: str) -> str:
    """Celery task sent with a retry's due time as its ETA (retries.schedule_due_retry): start the
    job's retry if it is due and nobody else has; a stale or duplicate timer does nothing."""
    from etl_pipelines.framework.instance import get_instance
    from etl_pipelines.framework.retries import start_retry_if_due
    from etl_pipelines.settings import Settings
    from etl_pipelines.store import JobStore

    settings = Settings.from_env()
    action = start_retry_if_due(get_instance(), JobStore(settings.database_url), settings, job_id)
    return str(action) if action is not None else "nothing to do"
