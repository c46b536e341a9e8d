"""Job types executed in process (execute_in_process) against real target databases."""

from typing import Any

import dagster as dg
import sqlalchemy as sa

from etl_pipelines.definitions import defs
from etl_pipelines.framework.op import run_config_for
from etl_pipelines.framework.registry import get_job_type
from etl_pipelines.settings import Settings
from etl_pipelines.store import JobRecord, JobStore


def execute(job_type: str, **params: Any) -> tuple[JobRecord, dg.ExecuteInProcessResult]:
    job_cls = get_job_type(job_type)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(job_type).execute_in_process(
            run_config=run_config_for(job_cls, job_cls.model_construct(**params).model_dump(mode="json")),
            instance=instance,
            raise_on_error=False,
        )
    return JobStore(Settings.from_env().database_url).require(result.run_id), result


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
