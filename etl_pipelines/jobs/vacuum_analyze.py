from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext
from etl_pipelines.identifiers import TableName
from etl_pipelines.settings import Settings


class VacuumAnalyze(BaseJob):
    """VACUUM and/or ANALYZE a table or the whole database (outside a transaction, as PostgreSQL needs)."""

    queue: ClassVar[str] = "low"
    # Maintenance of a large table legitimately runs for hours: no statement limit, 6 h per attempt.
    timeout_seconds: ClassVar[float | None] = 0
    attempt_seconds: ClassVar[float | None] = 6 * 3600

    table: str | None = Field(default=None, description="Table or schema.table; empty: every table.")
    vacuum: bool = Field(default=True, description="Reclaim dead rows (VACUUM).")
    analyze: bool = Field(default=True, description="Refresh planner statistics (ANALYZE).")
    full: bool = Field(default=False, description="VACUUM FULL: rewrite the table (locks it).")

    def validate_input(self, settings: Settings) -> None:
        if self.table is not None:
            TableName.parse(self.table)

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        table = TableName.parse(self.table) if self.table else None
        done = []
        with ctx.autocommit() as connection:
            # Statements hold keywords chosen here and validated, dialect-quoted identifiers only.
            quoted = table.quoted(connection.dialect) if table else ""
            if connection.dialect.name == "postgresql":
                options = [o for o, on in (("FULL", self.full), ("ANALYZE", self.analyze)) if on]
                if self.vacuum:
                    opts = f"({', '.join(options)}) " if options else ""
                    connection.execute(sa.text(f"VACUUM {opts}{quoted}".strip()))
                    done += ["vacuum", *[o.lower() for o in options]]
                elif self.analyze:
                    connection.execute(sa.text(f"ANALYZE {quoted}".strip()))
                    done.append("analyze")
            else:
                # SQLite vacuums whole database files (a schema is an attached file).
                if self.vacuum:
                    schema = (
                        connection.dialect.identifier_preparer.quote(table.schema)
                        if table and table.schema
                        else ""
                    )
                    connection.execute(sa.text(f"VACUUM {schema}".strip()))
                    done.append("vacuum")
                if self.analyze:
                    connection.execute(sa.text(f"ANALYZE {quoted}".strip()))
                    done.append("analyze")
        return {"table": self.table or "(all)", "operations": done}
