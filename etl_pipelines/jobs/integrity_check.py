import json
from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.errors import NonRetryableError
from etl_pipelines.framework import BaseJob, JobContext, JobInputError
from etl_pipelines.identifiers import TableName, allowed_table, check_identifier
from etl_pipelines.settings import Settings


class IntegrityViolation(NonRetryableError):
    """An integrity check found violations; the message carries the report as JSON."""


def parse_reference(text: str, allowed: tuple[str, ...]) -> tuple[str, TableName, str]:
    """`user_id->auth.users.id` -> ("user_id", auth.users, "id"); the parent in `allowed` schemas."""
    column, arrow, parent = text.partition("->")
    parts = parent.rsplit(".", 1)
    if not arrow or len(parts) != 2:
        raise JobInputError(f"reference {text!r}: expected column->schema.table.column")
    return (
        check_identifier(column.strip(), "column name"),
        allowed_table(parts[0].strip(), allowed),
        check_identifier(parts[1].strip(), "column name"),
    )


class IntegrityCheck(BaseJob):
    """Check a table for foreign-key orphans and row counts; fail with a report when violated."""

    queue: ClassVar[str] = "low"

    table: str = Field(description="schema.table to check; the schema must be in ETL_ALLOWED_SCHEMAS.")
    references: list[str] = Field(
        default_factory=list,
        description="Extra references to check, as column->schema.table.column, parent in "
        "ETL_ALLOWED_SCHEMAS (declared foreign keys are always checked; those whose parent is "
        "outside the allowed schemas are skipped and reported).",
    )
    min_rows: int | None = Field(default=None, ge=0, description="Fail when the table has fewer rows.")
    max_rows: int | None = Field(default=None, ge=0, description="Fail when the table has more rows.")

    def validate_input(self, settings: Settings) -> None:
        super().validate_input(settings)  # the table: schema-qualified, in an allowed schema
        for reference in self.references:
            parse_reference(reference, settings.allowed_schemas)

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        allowed = ctx.settings.allowed_schemas
        table = allowed_table(self.table, allowed)
        references = [parse_reference(r, allowed) for r in self.references]
        skipped = []
        with ctx.connect() as connection:
            # PostgreSQL names a parent on the connection's search_path without its schema: that is
            # the connection's default schema (public, or the jobs role's), not the child's schema.
            # SQLite's foreign keys always name the child's own file.
            default_schema = table.schema if connection.dialect.name == "sqlite" else None
            default_schema = default_schema or connection.dialect.default_schema_name
            for fk in sa.inspect(connection).get_foreign_keys(table.name, schema=table.schema):
                name = f"{fk.get('referred_schema') or default_schema}.{fk['referred_table']}"
                try:
                    parent = allowed_table(name, allowed)
                except JobInputError as exc:
                    # Skipped and reported rather than failed: the table's other checks still run,
                    # and the job never reads a table outside the allowed schemas.
                    skipped.append({"foreign_key": fk.get("name"), "parent": name, "reason": str(exc)})
                    continue
                references += [
                    (child, parent, referred)
                    for child, referred in zip(fk["constrained_columns"], fk["referred_columns"], strict=True)
                ]
            quote = connection.dialect.identifier_preparer.quote
            child_table = table.quoted(connection.dialect)
            rows = connection.execute(sa.text(f"SELECT count(*) FROM {child_table}")).scalar_one()  # noqa: S608
            checks = []
            for column, parent, referred in dict.fromkeys(references):
                # Only validated, dialect-quoted identifiers are placed in the statement.
                orphans = sa.text(
                    f"SELECT c.{quote(column)} FROM {child_table} c "  # noqa: S608
                    f"LEFT JOIN {parent.quoted(connection.dialect)} p "
                    f"ON c.{quote(column)} = p.{quote(referred)} "
                    f"WHERE c.{quote(column)} IS NOT NULL AND p.{quote(referred)} IS NULL"
                )
                found = connection.execute(orphans).scalars().all()
                checks.append(
                    {
                        "check": f"{column} -> {parent}.{referred}",
                        "orphans": len(found),
                        "sample": sorted({str(v) for v in found})[:10],
                    }
                )
        problems = [c["check"] for c in checks if c["orphans"]]
        if self.min_rows is not None and rows < self.min_rows:
            problems.append(f"row count {rows} < min_rows {self.min_rows}")
        if self.max_rows is not None and rows > self.max_rows:
            problems.append(f"row count {rows} > max_rows {self.max_rows}")
        report = {"table": str(table), "rows": rows, "checks": checks, "violations": problems}
        if skipped:
            report["skipped"] = skipped
        if problems:
            raise IntegrityViolation(f"{len(problems)} violation(s): {json.dumps(report)}")
        return report
