"""etl_pipelines: database and ETL jobs queued, prioritised, retried and recorded, on Dagster."""

from etl_pipelines.framework import BaseJob, JobContext, JobHandle, JobInputError, dispatch

__all__ = ["BaseJob", "JobContext", "JobHandle", "JobInputError", "dispatch"]
