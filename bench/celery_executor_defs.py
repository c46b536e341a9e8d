"""Bench-only code location: the project's `fibonacci` job on dagster-celery's `celery_executor`.

Used by bench/celery_executor.py (workspace location `etl_pipelines`, module
`celery_executor_defs`, working directory bench/). The job is built by the project's own
`build_job(Fibonacci)`, with the resources of etl_pipelines/definitions.py; only the executor
differs: each op step is sent to Celery (queue `dagster`) and executed by a
`celery -A dagster_celery.app worker`.

Environment (read at import, this module is bench-only):
    ETL_BENCH_CELERY_URL     broker and result backend, e.g. redis://127.0.0.1:6379/7
    ETL_BENCH_CELERY_PREFIX  kombu/Celery `global_keyprefix` of every Redis key (cleaned up after)
"""

import os

import dagster as dg
from dagster_celery import celery_executor

from etl_pipelines.framework.op import build_job
from etl_pipelines.jobs.fibonacci import Fibonacci
from etl_pipelines.resources import JobStoreResource, TargetDatabase


def celery_config_source(prefix: str) -> dict:
    """Celery settings shared by the executor (run worker) and the Celery worker's config module."""
    transport: dict = {"queue_order_strategy": "priority"}
    if prefix:
        transport["global_keyprefix"] = prefix
    return {
        "broker_transport_options": transport,
        "result_backend_transport_options": dict(transport),
        "worker_prefetch_multiplier": 1,
    }


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
