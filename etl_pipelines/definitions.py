"""The one Definitions object: a job per job type, schedules, sensors, resources, executor."""

import dagster as dg

from etl_pipelines.framework.op import build_job
from etl_pipelines.framework.registry import job_types
from etl_pipelines.resources import JobStoreResource, TargetDatabase
from etl_pipelines.schedules import build_schedules
from etl_pipelines.sensors import build_sensors

jobs = {name: build_job(job_cls) for name, job_cls in job_types().items()}

defs = dg.Definitions(
    jobs=list(jobs.values()),
    schedules=build_schedules(jobs),
    sensors=build_sensors(jobs),
    resources={"job_store": JobStoreResource(), "database": TargetDatabase()},
    # One op per job: run it in the run's own process rather than spawning one per step.
    executor=dg.in_process_executor,
)
