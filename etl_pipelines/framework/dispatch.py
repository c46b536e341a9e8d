"""dispatch(): queue a job and return at once. The record is saved before the run exists."""

import uuid
from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_pipelines.framework._dagster_internal import run_submitter
from etl_pipelines.framework.base import BaseJob
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.op import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import JOB_ID_TAG, run_tags
from etl_pipelines.lifecycle import check_queue, events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStatus, JobStore
from etl_pipelines.store.follow import follow


@dataclass(frozen=True)
class JobHandle:
    """A dispatched job: its id, and a way to look at its record."""

    id: str
    job_type: str
    queue: str
    database_url: str

    def record(self) -> JobRecord:
        """The job's current record."""
        return JobStore(self.database_url).require(self.id)

    def status(self) -> JobStatus:
        return self.record().status

    def wait(self, timeout: float = 300.0, poll: float = 0.2) -> JobRecord:
        """Poll until the job is completed, failed or cancelled; TimeoutError after `timeout` s."""
        return follow(JobStore(self.database_url), self.id, timeout=timeout, poll=poll)


def dispatch(job_type: str | type[BaseJob], *, queue: str | None = None, **params: Any) -> JobHandle:
    """Check the job, save its record as queued, submit its run to Dagster's run queue."""

    job_cls = get_job_type(job_type) if isinstance(job_type, str) else job_type
    settings = Settings.from_env()
    queue = check_queue(queue or job_cls.queue, settings.queues)
    job = job_cls.from_params(params)
    job.validate_input(settings)

    store = JobStore(settings.database_url)  # first: an unreachable job table fails fast
    instance = get_instance()
    submitter = run_submitter(instance)
    # The job's id is its first run's id; the record exists before the run can start.
    job_id = str(uuid.uuid4())
    payload = job.model_dump(mode="json")
    events.bootstrap(store, job_cls.new_job(job_id, queue, payload, settings), job_id, must_be_new=True)
    tags = {JOB_ID_TAG: job_id, **run_tags(job, job_cls, queue, settings)}
    try:
        submitter.submit(job_cls.job_type(), run_config_for(job_cls, payload), tags, run_id=job_id)
    except BaseException:
        # Never queued: leave no record claiming it was, and no half-made run. (Unless recovery
        # found the record and submitted its run meanwhile: then the job lives on.)
        run = instance.get_run_by_id(job_id)
        if run is None or run.status == dg.DagsterRunStatus.NOT_STARTED:
            if run is not None:
                instance.delete_run(job_id)
            store.delete(job_id)
        raise
    return JobHandle(id=job_id, job_type=job_cls.job_type(), queue=queue, database_url=settings.database_url)
