"""Dagster resources: the job table and the target database."""

from etl_pipelines.resources.database import TargetDatabase
from etl_pipelines.resources.job_store import JobStoreResource

__all__ = ["JobStoreResource", "TargetDatabase"]
