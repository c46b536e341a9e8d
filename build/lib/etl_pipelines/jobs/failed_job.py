from typing import ClassVar

from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext


class FailedJobError(RuntimeError):
    """The failure FailedJob exists to produce."""


class FailedJob(BaseJob):
    """Always fail: exercises retries, error and traceback recording and manual intervention."""

    queue: ClassVar[str] = "default"

    message: str = Field(default="FailedJob always fails", description="The error message raised.")

    def handle(self, ctx: JobContext) -> None:
        raise FailedJobError(self.message)
