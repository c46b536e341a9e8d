"""The Celery task a worker runs: execute one launched Dagster run in this warm process."""

import logging
from typing import Any

import dagster as dg

from etl_pipelines.framework._dagster_internal import execute_run_here

EXECUTE_RUN_TASK = "etl_pipelines.execute_run"
logger = logging.getLogger(__name__)


def execute_run(task: Any, run_id: str) -> str:
    """Celery task: execute a launched run here, once (a redelivered message finds it started)."""
    from etl_pipelines.framework.instance import get_instance

    instance = get_instance()
    run = instance.get_run_by_id(run_id)
    if run is None:
        logger.warning("run %s does not exist; dropping its task", run_id)
        return "missing"
    if run.status != dg.DagsterRunStatus.STARTING:
        logger.info("run %s is %s, not STARTING; not executing it again", run_id, run.status.value)
        return f"skipped: {run.status.value}"
    code = execute_run_here(instance, run_id)
    return "failure" if code else "success"
