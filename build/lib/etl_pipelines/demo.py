"""The demo batch: the seven sample jobs on their queues (the seed's /create-jobs)."""

from typing import Any

DEMO_BATCH: list[tuple[str, dict[str, Any]]] = [
    ("populate_records", {"rows": 1000}),
    ("slow_query", {"duration": 5}),
    ("data_aggregation", {"table": "auth.users", "group_by": "department", "value_column": "salary"}),
    ("truncate_table", {"table": "auth.users"}),
    ("drop_table", {"table": "auth.demo_scratch", "if_exists": True}),
    ("fibonacci", {"n": 30}),
    ("failed_job", {}),
]


def dispatch_demo() -> list[dict[str, Any]]:
    """Dispatch the demo batch; return what was queued (id, job type, queue)."""
    from etl_pipelines.framework.dispatch import dispatch

    queued = []
    for job_type, params in DEMO_BATCH:
        handle = dispatch(job_type, **params)
        queued.append({"id": handle.id, "job_type": job_type, "queue": handle.queue})
    return queued
