from typing import Any, ClassVar

import dagster as dg

from etl_pipelines.framework import BaseJob, JobContext


class DemoBatch(BaseJob):
    """Queue the demo batch: the seven sample jobs on their own queues (the seed's /create-jobs)."""

    queue: ClassVar[str] = "high"
    # Queueing is not worth retrying minutes later (a partial batch would be queued twice): the
    # next scheduled batch will come.
    retry_policy: ClassVar[dg.RetryPolicy] = dg.RetryPolicy(max_retries=0)

    def handle(self, ctx: JobContext) -> list[dict[str, Any]]:
        from etl_pipelines.demo import dispatch_demo

        queued = dispatch_demo()
        ctx.log.info(f"queued {len(queued)} demo jobs")
        return queued
