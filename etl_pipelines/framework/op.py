"""A BaseJob subclass as a one-op Dagster job, and the run config that carries its parameters."""

from collections.abc import Mapping
from typing import Any

import dagster as dg

from etl_pipelines.framework.attempt import run_attempt
from etl_pipelines.framework.base import BaseJob
from etl_pipelines.framework.tags import JOB_TYPE_TAG, QUEUE_TAG
from etl_pipelines.resources import JobStoreResource, TargetDatabase


def build_job(job_cls: type[BaseJob]) -> dg.JobDefinition:
    """A Dagster job with one op whose typed config is the job type's parameters.

    The op has no RetryPolicy on purpose: Dagster would retry it in memory, holding the worker
    slot through the wait and losing the retry with the process. A failed attempt ends the run and
    the retry is queued durably when due (lifecycle.retry, the due_retries sensor).
    """
    name = job_cls.job_type()
    description = job_cls.description()

    # The result goes to the job table and the run's metadata; a Nothing output keeps the IO
    # manager from pickling a copy of it for every run.
    @dg.op(
        name=op_name(job_cls),
        description=description,
        tags={JOB_TYPE_TAG: name},
        out=dg.Out(dg.Nothing),
    )
    def _op(
        context: dg.OpExecutionContext,
        config: job_cls,  # type: ignore[valid-type]  # a class chosen at run time
        job_store: JobStoreResource,
        database: TargetDatabase,
    ) -> None:
        run_attempt(context, config, job_store, database)

    @dg.job(
        name=name,
        description=description,
        tags={JOB_TYPE_TAG: name, QUEUE_TAG: job_cls.queue},
    )
    def _job() -> None:
        _op()

    return _job


def op_name(job_cls: type[BaseJob]) -> str:
    """The op's name (a repository's op and job names must differ): `fibonacci_op`."""
    return f"{job_cls.job_type()}_op"


def run_config_for(job_cls: type[BaseJob], params: Mapping[str, Any]) -> dict[str, Any]:
    """The Dagster run config that carries a job's parameters to its op."""
    return {"ops": {op_name(job_cls): {"config": dict(params)}}}


def params_of(job_cls: type[BaseJob], run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The job parameters a run's config carries (empty if it carries none)."""
    return dict(run_config.get("ops", {}).get(op_name(job_cls), {}).get("config") or {})
