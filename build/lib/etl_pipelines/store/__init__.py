"""The job table: SQLAlchemy models and queries. No Dagster import here."""

from etl_pipelines.store.models import JobRecord, JobStatus
from etl_pipelines.store.store import JobNotFoundError, JobStore

__all__ = ["JobNotFoundError", "JobRecord", "JobStatus", "JobStore"]
