from importlib import resources
from typing import ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext

SQL_FILE = "populate_records.sql"
TABLE = "auth.users"  # what the SQL file creates and fills


def sql_statements(text: str) -> list[str]:
    """The statements of a SQL file (split on `;` at line ends, comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";\n") if part.strip().rstrip(";")]


class PopulateRecords(BaseJob):
    """Create auth.users and fill it with sample users (runs jobs/sql/populate_records.sql)."""

    queue: ClassVar[str] = "high"
    destructive: ClassVar[bool] = True  # it empties auth.users before filling it

    rows: int = Field(default=1000, ge=1, le=10_000_000, description="How many users to insert.")

    def target(self) -> str:
        return TABLE

    def handle(self, ctx: JobContext) -> dict[str, object]:
        text = resources.files("etl_pipelines.jobs").joinpath("sql", SQL_FILE).read_text()
        with ctx.begin() as connection:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS needs the right to create schemas
            # even when the schema exists, which the jobs' own role does not have (deploy/).
            if connection.dialect.name == "postgresql" and not sa.inspect(connection).has_schema("auth"):
                connection.execute(sa.text("CREATE SCHEMA auth"))
            for statement in sql_statements(text):
                params = {"rows": self.rows} if ":rows" in statement else {}
                connection.execute(sa.text(statement.rstrip(";")), params)
            count = connection.execute(sa.text("SELECT count(*) FROM auth.users")).scalar_one()
        ctx.log.info(f"auth.users now holds {count} rows")
        return {"table": "auth.users", "rows": int(count)}
