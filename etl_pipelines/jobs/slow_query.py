from typing import ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext


class SlowQuery(BaseJob):
    """Run a query that takes `duration` seconds in the database (pg_sleep)."""

    queue: ClassVar[str] = "medium"

    duration: float = Field(default=5.0, ge=0, le=3600, description="Seconds the query sleeps.")

    def handle(self, ctx: JobContext) -> dict[str, float]:
        with ctx.database.engine().connect() as connection:
            connection.execute(sa.text("SELECT pg_sleep(:duration)"), {"duration": self.duration})
        return {"slept_seconds": self.duration}
