"""Bench-only code location of celery_executor.py: the project's `fibonacci` job on `celery_executor`.

The job is the project's own `build_job(Fibonacci)` with the resources of
etl_pipelines/definitions.py; only the executor differs: each op step goes to Celery queue
`dagster`, executed by a `celery -A dagster_celery.app worker`. Read at import (bench-only):
ETL_BENCH_CELERY_URL (broker and result backend) and ETL_BENCH_CELERY_PREFIX (kombu's
`global_keyprefix` of every Redis key).
"""

import os

import dagster as dg
from celery_executor import celery_config_source
from dagster_celery import celery_executor

from etl_pipelines.framework.op import build_job
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.resources import JobStoreResource, TargetDatabase

executor = celery_executor.configured(
    {
        "broker": {"env": "ETL_BENCH_CELERY_URL"},
        "backend": {"env": "ETL_BENCH_CELERY_URL"},
        "config_source": celery_config_source(os.environ.get("ETL_BENCH_CELERY_PREFIX", "")),
    }
)

defs = dg.Definitions(
    jobs=[build_job(Fibonacci)],
    resources={"job_store": JobStoreResource(), "database": TargetDatabase()},
    executor=executor,
)
