from typing import ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext
from etl_pipelines.identifiers import TableName


class TruncateTable(BaseJob):
    """Remove every row of a table in an allowed schema (TRUNCATE; DELETE on SQLite)."""

    queue: ClassVar[str] = "low"
    destructive: ClassVar[bool] = True

    table: str = Field(description="schema.table to empty; the schema must be in ETL_ALLOWED_SCHEMAS.")

    def handle(self, ctx: JobContext) -> dict[str, object]:
        table = TableName.parse(self.table).check_schema(ctx.settings.allowed_schemas)
        with ctx.begin() as connection:
            quoted = table.quoted(connection.dialect)
            # Only validated, dialect-quoted identifiers are placed in these statements.
            rows = connection.execute(sa.text(f"SELECT count(*) FROM {quoted}")).scalar_one()  # noqa: S608
            verb = "TRUNCATE TABLE" if connection.dialect.name == "postgresql" else "DELETE FROM"
            connection.execute(sa.text(f"{verb} {quoted}"))
        ctx.log.info(f"removed {rows} rows from {table}")
        return {"table": str(table), "rows_removed": int(rows)}
