from typing import ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext
from etl_pipelines.identifiers import TableName


class DropTable(BaseJob):
    """Drop a table in an allowed schema."""

    queue: ClassVar[str] = "low"
    destructive: ClassVar[bool] = True

    table: str = Field(description="schema.table to drop; the schema must be in ETL_ALLOWED_SCHEMAS.")
    if_exists: bool = Field(default=False, description="Succeed when the table does not exist.")

    def handle(self, ctx: JobContext) -> dict[str, object]:
        table = TableName.parse(self.table).check_schema(ctx.settings.allowed_schemas)
        # The statement holds a keyword chosen here and the validated, dialect-quoted table name only.
        if_exists = " IF EXISTS" if self.if_exists else ""
        with ctx.begin() as connection:
            existed = sa.inspect(connection).has_table(table.name, schema=table.schema)
            connection.execute(sa.text(f"DROP TABLE{if_exists} {table.quoted(connection.dialect)}"))
        return {"table": str(table), "dropped": existed}
