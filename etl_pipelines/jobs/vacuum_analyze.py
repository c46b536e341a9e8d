from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext, JobInputError
from etl_pipelines.identifiers import TableName, allowed_table, check_identifier


class VacuumAnalyze(BaseJob):
    """VACUUM and/or ANALYZE a table, or every table of the allowed schemas (outside a transaction)."""

    queue: ClassVar[str] = "low"
    # Maintenance of a large table legitimately runs for hours: no statement limit, 6 h per attempt.
    timeout_seconds: ClassVar[float | None] = 0
    attempt_seconds: ClassVar[float | None] = 6 * 3600

    table: str | None = Field(
        default=None,
        description="schema.table, schema in ETL_ALLOWED_SCHEMAS; empty: every table of those schemas "
        "(never the whole database: Dagster's tables and the catalogs are not the jobs').",
    )
    vacuum: bool = Field(default=True, description="Reclaim dead rows (VACUUM).")
    analyze: bool = Field(default=True, description="Refresh planner statistics (ANALYZE).")
    full: bool = Field(default=False, description="VACUUM FULL: rewrite the table (locks it).")

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        allowed = ctx.settings.allowed_schemas
        tables: list[TableName] = []
        skipped: list[str] = []
        with ctx.autocommit() as connection:
            if self.table:
                tables.append(allowed_table(self.table, allowed))
            else:
                # Every table of the allowed schemas, each through the same rule: a system schema
                # listed in ETL_ALLOWED_SCHEMAS, or a name that is not a plain identifier, is skipped.
                inspector = sa.inspect(connection)
                for schema in allowed:
                    if not inspector.has_schema(schema):
                        continue
                    for name in inspector.get_table_names(schema=schema):
                        try:
                            tables.append(allowed_table(f"{schema}.{name}", allowed))
                        except JobInputError:
                            skipped.append(f"{schema}.{name}")
            if connection.dialect.name == "postgresql":
                done = self._postgresql(connection, tables)
            else:
                done = self._sqlite(connection, tables)
        if skipped:
            ctx.log.warning(f"not vacuumed (outside the rule for job tables): {', '.join(skipped)}")
        return {
            "table": self.table or "(every table of the allowed schemas)",
            "tables": [str(t) for t in tables],
            "skipped": skipped,
            "operations": done,
        }

    def _postgresql(self, connection: sa.Connection, tables: list[TableName]) -> list[str]:
        # Statements hold keywords chosen here and validated, dialect-quoted identifiers only.
        options = [o for o, on in (("FULL", self.full), ("ANALYZE", self.analyze)) if on]
        opts = f"({', '.join(options)}) " if options else ""
        for table in tables:
            quoted = table.quoted(connection.dialect)
            if self.vacuum:
                connection.execute(sa.text(f"VACUUM {opts}{quoted}"))
            elif self.analyze:
                connection.execute(sa.text(f"ANALYZE {quoted}"))
        if self.vacuum:
            return ["vacuum", *[o.lower() for o in options]]
        return ["analyze"] if self.analyze else []

    def _sqlite(self, connection: sa.Connection, tables: list[TableName]) -> list[str]:
        done = []
        if self.vacuum:
            # SQLite vacuums whole database files: an allowed schema is an attached file of its own.
            for schema in dict.fromkeys(t.schema for t in tables if t.schema):
                quoted = connection.dialect.identifier_preparer.quote(check_identifier(schema, "schema name"))
                connection.execute(sa.text(f"VACUUM {quoted}"))
            done.append("vacuum")
        if self.analyze:
            for table in tables:
                connection.execute(sa.text(f"ANALYZE {table.quoted(connection.dialect)}"))
            done.append("analyze")
        return done
