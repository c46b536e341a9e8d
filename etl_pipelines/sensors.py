"""Sensors that keep job records true when a run ends without its op saying so."""

import dagster as dg

from etl_pipelines.framework.registry import job_types
from etl_pipelines.framework.tags import job_id_of
from etl_pipelines.resources import JobStoreResource


@dg.run_failure_sensor(
    name="job_record_failures",
    description="Marks a job failed when its run failed outside the op (crash, launch error, timeout).",
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def job_record_failures(context: dg.RunFailureSensorContext, job_store: JobStoreResource) -> None:
    run = context.dagster_run
    if run.job_name not in job_types():
        return
    store = job_store.store()
    record = store.get(job_id_of(run))
    if record is not None and not record.status.is_final and record.run_id == run.run_id:
        message = context.failure_event.message or "run failed"
        context.log.info(f"job {record.id}: run {run.run_id} failed outside its op: {message}")
        store.mark_failed(record.id, error=f"RunFailure: {message}", traceback=None)


@dg.run_status_sensor(
    name="job_record_cancellations",
    description="Marks a job cancelled when its run is cancelled.",
    run_status=dg.DagsterRunStatus.CANCELED,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def job_record_cancellations(context: dg.RunStatusSensorContext, job_store: JobStoreResource) -> None:
    run = context.dagster_run
    if run.job_name not in job_types():
        return
    store = job_store.store()
    record = store.get(job_id_of(run))
    if record is not None and not record.status.is_final and record.run_id == run.run_id:
        store.mark_cancelled(record.id)


sensors = [job_record_failures, job_record_cancellations]
