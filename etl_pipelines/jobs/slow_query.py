from typing import ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext


class SlowQuery(BaseJob):
    """Run a query that takes `duration` seconds in the database (pg_sleep)."""

    queue: ClassVar[str] = "medium"

    duration: float = Field(default=5.0, ge=0, le=3600, description="Seconds the query sleeps.")
    table: str | None = Field(
        default=None,
        description="A schema.table (in ETL_ALLOWED_SCHEMAS) this query stands for: jobs on the "
        "same table never run at once.",
    )

    def handle(self, ctx: JobContext) -> dict[str, float]:
        with ctx.connect() as connection:
            connection.execute(sa.text("SELECT pg_sleep(:duration)"), {"duration": self.duration})
        return {"slept_seconds": self.duration}
