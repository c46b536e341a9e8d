"""EtlRunCoordinator: Dagster's queued run coordinator, plus a job record for every run submitted.

Every path that queues a run goes through the instance's run coordinator: dispatch(), the UI
launchpad and re-execution, GraphQL, `dagster job launch`, schedules and sensors. So this is where
a run is admitted for its job (lifecycle.events.admit_run: record made or followed, queue checked,
or the run refused) and where its queue becomes the `dagster/priority` the QueuedRunCoordinator
sorts by.
"""

import dagster as dg

from etl_pipelines.framework.op import params_of
from etl_pipelines.framework.registry import job_types
from etl_pipelines.framework.tags import JOB_ID_TAG, QUEUE_TAG, job_id_of, run_tags
from etl_pipelines.lifecycle import Refused, events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobStore


class EtlRunCoordinator(dg.QueuedRunCoordinator):
    """QueuedRunCoordinator that records each etl_pipelines run in the job table before queueing it."""

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if run.job_name in job_types() and run.status == dg.DagsterRunStatus.NOT_STARTED:
            run = register_run(self._instance, run, Settings.from_env())
            if run.status == dg.DagsterRunStatus.FAILURE:
                return run
            context = dg.SubmitRunContext(run, context.workspace)
        return super().submit_run(context)


def register_run(instance: dg.DagsterInstance, run: dg.DagsterRun, settings: Settings) -> dg.DagsterRun:
    """Admit the run for its job and tag it with job id, queue, priority, target and time limit;
    a refused run is failed with the reason, before it runs."""
    job_cls = job_types()[run.job_name]
    queue = run.tags.get(QUEUE_TAG) or job_cls.queue
    job_id = job_id_of(run)
    payload = params_of(job_cls, run.run_config)
    store = JobStore(settings.database_url)
    try:
        events.admit_run(
            store,
            job_cls.new_job(job_id, queue, payload, settings),
            run.run_id,
            parent_run_id=run.parent_run_id,
            queues=settings.queues,
        )
    except Refused as exc:
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
    return run
