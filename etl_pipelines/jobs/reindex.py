from typing import ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext
from etl_pipelines.identifiers import allowed_table


class Reindex(BaseJob):
    """Rebuild every index of a table (REINDEX TABLE CONCURRENTLY on PostgreSQL)."""

    queue: ClassVar[str] = "low"
    # Maintenance of a large table legitimately runs for hours: no statement limit, 6 h per attempt.
    timeout_seconds: ClassVar[float | None] = 0
    attempt_seconds: ClassVar[float | None] = 6 * 3600

    table: str = Field(
        description="schema.table whose indexes are rebuilt; the schema must be in ETL_ALLOWED_SCHEMAS."
    )

    def handle(self, ctx: JobContext) -> dict[str, object]:
        table = allowed_table(self.table, ctx.settings.allowed_schemas)
        with ctx.autocommit() as connection:
            indexes = [i["name"] for i in sa.inspect(connection).get_indexes(table.name, schema=table.schema)]
            # CONCURRENTLY keeps the table readable and writable while its indexes are rebuilt.
            keyword = "REINDEX TABLE CONCURRENTLY" if connection.dialect.name == "postgresql" else "REINDEX"
            connection.execute(sa.text(f"{keyword} {table.quoted(connection.dialect)}"))
        return {"table": str(table), "indexes": sorted(filter(None, indexes))}
