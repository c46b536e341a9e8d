"""EtlRunCoordinator: every run is admitted when it is submitted and handed to Celery at once.

Every path that submits a run goes through the instance's run coordinator: dispatch(), the UI
launchpad and re-execution, GraphQL `launchRun`, `dagster job launch`, schedules, sensors, due
retries and recovery. Here a run is admitted for its job (lifecycle.events.admit_run: record made
or followed, queue checked, or the run refused; a run takes an existing job only as one of its
runs or a re-execution of its current run, whatever its etl/job_id says), its parameters are
checked as dispatch() checks them (a new job with bad ones fails at once, no op runs), its tags
are set from its config (queue, priority, target table, time limit: never taken from the launch),
it is marked QUEUED, and, unless another run holds its target table (lifecycle.admission), its
task goes to its Celery priority queue in the same call. Celery's queues hold the backlog,
strictly by priority; no daemon tick is on the path. A run waiting for its table stays QUEUED and
is handed to Celery by whoever ends the holder's attempt (`hand_on`).

Until a worker takes it, a run is QUEUED, not STARTING: Dagster's run monitoring times out only
runs that are starting, so no backlog, however deep, fails a run for waiting (the worker marks it
STARTING when it takes it). A message the broker lost is found by recovery.
"""

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import dagster as dg

from etl_pipelines.errors import JobInputError
from etl_pipelines.framework._dagster_internal import ConfigurableClass, ConfigurableClassData, RunCoordinator
from etl_pipelines.framework.base import BaseJob
from etl_pipelines.framework.launch import hand_on, start, start_holder
from etl_pipelines.framework.op import params_of
from etl_pipelines.framework.registry import job_types
from etl_pipelines.framework.tags import (
    JOB_ID_TAG,
    MAX_RUNTIME_TAG,
    PRIORITY_TAG,
    QUEUE_TAG,
    RUNTIME_TAGS,
    TARGET_TAG,
    job_id_of,
    run_tags,
)
from etl_pipelines.identifiers import IdentifierError
from etl_pipelines.lifecycle import ForeignJob, Refused, admission, events
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStateError, JobStatus, JobStore, schema

logger = logging.getLogger(__name__)


class EtlRunCoordinator(RunCoordinator, ConfigurableClass):
    """Admits each run when it is submitted and sends it to its Celery queue unless its table is busy."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        super().__init__()
        # Before the first submission (the production storage checks when the instance loads;
        # the embedded default's SQLite storage does not): a job table older or newer than this
        # code is refused with the command that fixes it.
        schema.check(Settings.from_env().database_url)

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> "EtlRunCoordinator":
        return cls(inst_data=inst_data, **config_value)

    def submit_run(self, context: dg.SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if run.status != dg.DagsterRunStatus.NOT_STARTED:
            logger.warning("run %s submitted again while %s; left as it is", run.run_id, run.status.value)
            return self._instance.get_run_by_id(run.run_id) or run
        settings = Settings.from_env()
        if run.job_name in job_types():
            run = register_run(self._instance, run, settings)
            if run.status == dg.DagsterRunStatus.FAILURE:
                return run
        self._instance.report_dagster_event(dg.DagsterEvent.job_enqueue(run), run_id=run.run_id)
        run = run.with_status(dg.DagsterRunStatus.QUEUED)  # what the event wrote; no re-read
        admit(self._instance, run, JobStore(settings.database_url))
        return run

    def cancel_run(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        if run.status != dg.DagsterRunStatus.QUEUED:
            return self._instance.run_launcher.terminate(run_id)
        # Waiting in Celery or in its table's line: taken out of the broker first, so no worker
        # takes it after this (one that already did finds the run cancelled and drops it).
        withdraw = getattr(self._instance.run_launcher, "withdraw", None)
        if withdraw is not None:
            withdraw(run)
        self._instance.report_run_canceling(run, message="Cancelling a run that waits to start.")
        self._instance.report_run_canceled(run, message="Cancelled before it started.")
        if run.job_name in job_types():
            store = JobStore(Settings.from_env().database_url)
            record = store.get(job_id_of(run))
            if record is not None and record.run_id == run_id:
                with contextlib.suppress(JobStateError):  # it started or ended meanwhile
                    events.cancelled(store, record.id, run_id, reason="cancelled while waiting to start")
            hand_on(self._instance, store, run_id)
        return True


def register_run(instance: dg.DagsterInstance, run: dg.DagsterRun, settings: Settings) -> dg.DagsterRun:
    """Admit the run for its job and set its job id, queue, priority, target and time limit from its
    config (a launch's own values for these are overwritten); a refused run is failed with the reason.

    The parameters are checked here as dispatch() checks them (pydantic, then validate_input), for
    every path: a launch with bad parameters fails at once, its job too, and no op runs for it.
    """
    job_cls = job_types()[run.job_name]
    queue = run.tags.get(QUEUE_TAG) or job_cls.queue
    job_id = job_id_of(run)
    payload = params_of(job_cls, run.run_config)
    job, problem = checked_job(job_cls, payload, settings)
    store = JobStore(settings.database_url)
    try:
        events.admit_run(
            store,
            job_cls.new_job(job_id, queue, payload, settings),
            run.run_id,
            parent_run_id=run.parent_run_id,
            queues=settings.queues,
            problem=problem,
            same_params=lambda recorded: _normalised(job_cls, recorded) == _normalised(job_cls, payload),
        )
    except Refused as exc:
        if isinstance(exc, ForeignJob):
            # The job's runs are found by this tag (UI, tests): a run refused for naming a job
            # it does not belong to is listed as a job of its own (its message names the other).
            instance.add_run_tags(run.run_id, {JOB_ID_TAG: run.run_id})
        instance.report_run_failed(run, message=str(exc))
        return instance.get_run_by_id(run.run_id) or run
    tags = run_tags(job, job_cls, queue, settings)
    if TARGET_TAG in tags:
        try:
            tags[TARGET_TAG] = admission.table_key(tags[TARGET_TAG], settings.target_dialect)
        except IdentifierError:  # no table at all: the op fails the job at once, with the reason
            del tags[TARGET_TAG]
    wanted = {JOB_ID_TAG: job_id, **tags}
    changed = {key: value for key, value in wanted.items() if run.tags.get(key) != value}
    if TARGET_TAG in run.tags and TARGET_TAG not in wanted:
        changed[TARGET_TAG] = ""  # a launch's own target for a job that has none
    if MAX_RUNTIME_TAG not in wanted and any(run.tags.get(key) for key in RUNTIME_TAGS):
        # A job type without a limit of its own: a launch's own limit (Dagster's run monitoring
        # reads dagster/max_runtime, else dagster/max_runtime_seconds) would end its runs early or
        # never. Emptied, the instance's run_monitoring.max_runtime_seconds applies, as to any run
        # without one. (Tags cannot be removed, only overwritten.)
        changed[MAX_RUNTIME_TAG] = ""
    if changed:
        instance.add_run_tags(run.run_id, changed)
        run = instance.get_run_by_id(run.run_id) or run
    return run


def _normalised(job_cls: type[BaseJob], params: dict[str, Any]) -> Any:
    """Parameters as the job type reads them (defaults filled in), or as given if they are invalid."""
    try:
        return job_cls.from_params(params).model_dump(mode="json")
    except JobInputError:
        return params


def checked_job(
    job_cls: type[BaseJob], payload: dict[str, Any], settings: Settings
) -> tuple[BaseJob | None, str | None]:
    """The job a run's parameters make, checked as dispatch() checks them, or None and what is
    wrong ("JobInputError: ...", as the op would have recorded it)."""
    try:
        job = job_cls.from_params(payload)
        job.validate_input(settings)
    except JobInputError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return job, None


def admit(instance: dg.DagsterInstance, run: dg.DagsterRun, store: JobStore) -> None:
    """Send the QUEUED run to Celery now, unless another run holds its table: then it waits in line."""
    target = run.tags.get(TARGET_TAG) if run.job_name in job_types() else None
    if not target:
        start(instance, run)
        return
    priority = int(run.tags.get(PRIORITY_TAG) or 0)
    first = admission.enter(store, run.run_id, job_id_of(run), target, priority)
    if first is None:
        holders = [claim.run_id for claim in store.claims(target) if claim.holding]
        instance.report_engine_event(
            f"Waiting for table {target}, held by run {holders[0] if holders else '?'}.", run
        )
        return
    if first == run.run_id:
        start(instance, run)
    else:
        start_holder(instance, store, first)


def cancel_job(
    instance: dg.DagsterInstance, store: JobStore, job_id: str, *, actor: str, reason: str | None
) -> JobRecord:
    """An operator cancels a job: a queued or started one through its run (taken out of the broker,
    or its task revoked), one waiting for its retry in the job table. JobStateError otherwise."""
    record = store.require(job_id)
    if record.status == JobStatus.WAITING_RETRY:
        return events.retry_cancelled(store, record, actor=actor, reason=reason)
    run = instance.get_run_by_id(record.run_id) if record.run_id else None
    if record.status not in (JobStatus.QUEUED, JobStatus.STARTED) or run is None or run.is_finished:
        raise JobStateError(
            f"job {job_id} is {record.status.value}"
            + (f" and its run {run.run_id} is {run.status.value}" if run is not None else "")
            + ": only a queued, started or waiting_retry job with a live run can be cancelled"
        )
    if not instance.run_coordinator.cancel_run(run.run_id):
        raise JobStateError(f"run {run.run_id} of job {job_id} could not be cancelled (it ended meanwhile)")
    after = instance.get_run_by_id(run.run_id)
    if after is not None and after.status == dg.DagsterRunStatus.CANCELED:
        with contextlib.suppress(JobStateError):  # the coordinator cancelled it already (a waiting run)
            events.cancelled(store, job_id, run.run_id, actor=actor, reason=reason)
    # Still CANCELING: its attempt has not confirmed it stopped; the op records the cancellation
    # when it does (reported only once the attempt can do nothing more).
    return store.require(job_id)
