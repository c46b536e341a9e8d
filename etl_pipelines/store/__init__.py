"""The job table and its audit trail: SQLAlchemy models and queries. No Dagster import here."""

from etl_pipelines.store.models import JobEvent, JobRecord, JobStatus
from etl_pipelines.store.schema import SchemaVersionError
from etl_pipelines.store.store import ANY_RUN, SYSTEM_ACTOR, JobNotFoundError, JobStateError, JobStore

__all__ = [
    "ANY_RUN",
    "SYSTEM_ACTOR",
    "JobEvent",
    "JobNotFoundError",
    "JobRecord",
    "JobStateError",
    "JobStatus",
    "JobStore",
    "SchemaVersionError",
]
