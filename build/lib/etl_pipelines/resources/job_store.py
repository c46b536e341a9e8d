"""The job table as a Dagster resource."""

import dagster as dg
from pydantic import Field

from etl_pipelines.settings import Settings
from etl_pipelines.store import JobStore


class JobStoreResource(dg.ConfigurableResource):
    """Where job records are written (ETL_DATABASE_URL unless set here)."""

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job table; empty means ETL_DATABASE_URL, "
        "else SQLite under DAGSTER_HOME.",
    )

    def store(self) -> JobStore:
        """The JobStore for this resource's database."""
        return JobStore(self.database_url or Settings.from_env().database_url)
