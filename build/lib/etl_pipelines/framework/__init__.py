"""The machinery a job type uses: BaseJob, dispatch, queues, retries."""

from etl_pipelines.framework.base import BaseJob, JobContext, JobInputError
from etl_pipelines.framework.dispatch import JobHandle, dispatch

__all__ = ["BaseJob", "JobContext", "JobHandle", "JobInputError", "dispatch"]
