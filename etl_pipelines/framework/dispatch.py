"""dispatch(): queue a job and return at once. The record is saved before the run exists."""

import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

import dagster as dg

from etl_pipelines.errors import JobInputError
from etl_pipelines.framework._dagster_internal import DagsterRunAlreadyExists, run_submitter
from etl_pipelines.framework.base import BaseJob
from etl_pipelines.framework.instance import get_instance
from etl_pipelines.framework.op import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.framework.tags import JOB_ID_TAG, run_tags
from etl_pipelines.lifecycle import check_queue, events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStatus, JobStore
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


# Job ids of idempotency keys: uuid5 in this namespace over "<job type>:<key>". Never change it:
# a key dispatched before and after the change would make two jobs.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f0d3b8e-4c1a-5e2f-9a7b-2d5c8e1f4a60")


def job_id_for_key(job_type: str, idempotency_key: str) -> str:
    """The id of the job dispatched with `idempotency_key` (the same for every call with it)."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{job_type}:{idempotency_key}"))


def dispatch(
    job_type: str | type[BaseJob],
    *,
    queue: str | None = None,
    idempotency_key: str | None = None,
    **params: Any,
) -> JobHandle:
    """Check the job, save its record as queued, submit its run to Dagster's run queue.

    With `idempotency_key`, a call repeated with the same key (after a timeout, say, or an error
    raised once its run was queued) returns the job the first call made instead of a second one;
    JobInputError if that job was dispatched with other parameters or another queue.
    """

    job_cls = get_job_type(job_type) if isinstance(job_type, str) else job_type
    settings = Settings.from_env()
    queue = check_queue(queue or job_cls.queue, settings.queues)
    job = job_cls.from_params(params)
    job.validate_input(settings)
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key.strip()):
        raise JobInputError("idempotency_key must be a non-empty string")

    store = JobStore(settings.database_url)  # first: an unreachable job table fails fast
    payload = job.model_dump(mode="json")
    if idempotency_key is not None:
        # The job's id is its first run's id, derived from the key: a second call finds the job.
        job_id = job_id_for_key(job_cls.job_type(), idempotency_key)
    else:
        # The job's id is its first run's id; the record exists before the run can start.
        job_id = str(uuid.uuid4())
    tags = {JOB_ID_TAG: job_id, **run_tags(job, job_cls, queue, settings)}
    run_config = run_config_for(job_cls, payload)
    instance = get_instance()
    submitter = run_submitter(instance)
    existing = store.get(job_id) if idempotency_key is not None else None
    if existing is None:
        try:
            events.bootstrap(
                store, job_cls.new_job(job_id, queue, payload, settings), job_id, must_be_new=True
            )
        except JobStateError:
            if idempotency_key is None:
                raise
            existing = store.require(job_id)  # a concurrent call with the key saved it first
    if existing is not None:
        handle = _same_job(existing, job_cls, queue, payload, idempotency_key or "", settings)
        if existing.run_id == job_id and instance.get_run_by_id(job_id) is None:
            # The call that made it failed before its run existed: submitted now (a concurrent
            # submission of the same run id fails to create it, and that one stands).
            with contextlib.suppress(DagsterRunAlreadyExists):
                submitter.submit(job_cls.job_type(), run_config, tags, run_id=job_id)
        return handle
    try:
        submitter.submit(job_cls.job_type(), run_config, tags, run_id=job_id)
    except BaseException:
        if idempotency_key is not None:
            # Another call with the key may already hold this job's handle: the record stays and
            # recovery submits its run (a record without a submitted run is its "submit" case);
            # a repeated call returns it.
            raise
        # Never queued: leave no record claiming it was, and no half-made run. (Unless recovery
        # found the record and submitted its run meanwhile: then the job lives on.)
        run = instance.get_run_by_id(job_id)
        if run is None or run.status == dg.DagsterRunStatus.NOT_STARTED:
            if run is not None:
                instance.delete_run(job_id)
            store.delete(job_id)
        raise
    return JobHandle(id=job_id, job_type=job_cls.job_type(), queue=queue, database_url=settings.database_url)


def _same_job(
    record: JobRecord,
    job_cls: type[BaseJob],
    queue: str,
    payload: dict[str, Any],
    idempotency_key: str,
    settings: Settings,
) -> JobHandle:
    """The handle of the job an earlier call with the same idempotency key made, if it is this one."""
    if (record.job_type, record.queue, record.payload) != (job_cls.job_type(), queue, payload):
        raise JobInputError(
            f"idempotency key {idempotency_key!r} was used for job {record.id} with other parameters"
            f" ({record.job_type} on queue {record.queue}: {record.payload}); this call asks for"
            f" {job_cls.job_type()} on queue {queue}: {payload}"
        )
    return JobHandle(
        id=record.id, job_type=record.job_type, queue=record.queue, database_url=settings.database_url
    )
