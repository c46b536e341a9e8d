"""EtlRunCoordinator: Dagster's queued run coordinator, plus a job record for every run submitted.

Every path that queues a run goes through the instance's run coordinator: dispatch(), the UI
launchpad and re-execution, GraphQL, `dagster job launch`, schedules and sensors. So this is where
runs not made by dispatch() get their job record, their queue is checked, and their queue becomes
the `dagster/priority` the QueuedRunCoordinator sorts by.
"""

import dagster as dg

from etl_pipelines.errors import UnknownQueueError
from etl_pipelines.framework.op import params_of
from etl_pipelines.framework.registry import job_types
from etl_pipelines.framework.tags import JOB_ID_TAG, QUEUE_TAG, job_id_of, run_tags
from etl_pipelines.lifecycle.queues import check_queue
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobStateError, JobStatus, JobStore


class EtlRunCoordinator(dg.QueuedRunCoordinator):
    """QueuedRunCoordinator that records each etl_pipelines run in the job table before queueing it."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if run.job_name in job_types() and run.status == dg.DagsterRunStatus.NOT_STARTED:
            run = register_run(self._instance, run)
            if run.status == dg.DagsterRunStatus.FAILURE:
                return run
            context = dg.SubmitRunContext(run, context.workspace)
        return super().submit_run(context)


def register_run(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    """Tag the run with its job id, queue and priority and make sure its record says queued."""
    settings = Settings.from_env()
    job_cls = job_types()[run.job_name]
    queue = run.tags.get(QUEUE_TAG) or job_cls.queue
    job_id = job_id_of(run)
    store = JobStore(settings.database_url)
    payload = params_of(job_cls, run.run_config)
    existing = store.get(job_id)
    if existing is not None and existing.job_type != job_cls.job_type():
        # An etl/job_id tag naming another type's job: never let a run take over its record.
        message = f"run tag etl/job_id={job_id} names a {existing.job_type} job, not {job_cls.job_type()}"
        instance.report_run_failed(run, message=message)
        return instance.get_run_by_id(run.run_id) or run
    record = existing or store.ensure(
        id=job_id,
        job_type=job_cls.job_type(),
        job_class=job_cls.job_class(),
        queue=queue,
        payload=payload,
        max_retries=len(job_cls.retry_schedule(settings)),
        run_id=run.run_id,
    )
    try:
        check_queue(queue, settings.queues)
    except UnknownQueueError as exc:
        store.mark_failed(job_id, error=f"UnknownQueueError: {exc}", traceback=None)
        instance.report_run_failed(run, message=str(exc))
        return instance.get_run_by_id(run.run_id) or run

    try:
        job = job_cls(**payload)
    except Exception:  # bad config: the op reports it; only the target tag is lost here
        job = None
    wanted = {JOB_ID_TAG: job_id, **run_tags(job, job_cls, queue, settings)}
    missing = {key: value for key, value in wanted.items() if key not in run.tags}
    if missing:
        instance.add_run_tags(run.run_id, missing)
        run = instance.get_run_by_id(run.run_id) or run
    if run.run_id not in record.run_ids:
        # Another run of an existing job (a retry, recovery, a UI re-execution): it takes the job
        # only from the run it re-executes, and never while an attempt runs.
        parent = run.parent_run_id
        try:
            store.mark_queued(
                job_id,
                run.run_id,
                payload=payload,
                parent_run_id=parent,
                expect=[status for status in JobStatus if status != JobStatus.STARTED],
                reason=f"re-execution of run {parent}" if parent else None,
            )
        except JobStateError as exc:
            message = f"not queued: {exc} (re-execute the job's latest run once it has ended)"
            instance.report_run_failed(run, message=message)
            return instance.get_run_by_id(run.run_id) or run
    return run
