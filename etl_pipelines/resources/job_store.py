"""The job table as a Dagster resource."""

import dagster as dg

from etl_pipelines.settings import Settings
from etl_pipelines.store import JobStore


class JobStoreResource(dg.ConfigurableResource):
    """Where job records are written: ETL_DATABASE_URL, else SQLite under DAGSTER_HOME.

    Deliberately without config fields: a run's config comes from whoever launches it (launchpad,
    GraphQL), and a launch must not choose the database a job's outcome is written to. Dagster
    refuses run config for a resource that has no fields.
    """

    def store(self) -> JobStore:
        """The JobStore of the deployment's job table."""
        return JobStore(Settings.from_env().database_url)
