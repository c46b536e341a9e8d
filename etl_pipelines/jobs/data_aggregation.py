from typing import Any, ClassVar

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import Field

from etl_pipelines.framework import BaseJob, JobContext
from etl_pipelines.identifiers import allowed_table, check_identifier
from etl_pipelines.settings import Settings


class DataAggregation(BaseJob):
    """Group a table by a column, sum a numeric column per group and sort the groups (pandas)."""

    queue: ClassVar[str] = "medium"

    table: str = Field(
        default="auth.users", description="schema.table to read; the schema must be in ETL_ALLOWED_SCHEMAS."
    )
    group_by: str = Field(default="department", description="Column to group by.")
    value_column: str = Field(default="salary", description="Numeric column summed per group.")
    descending: bool = Field(default=True, description="Largest total first.")

    def validate_input(self, settings: Settings) -> None:
        super().validate_input(settings)  # the table: schema-qualified, in an allowed schema
        check_identifier(self.group_by, "column name")
        check_identifier(self.value_column, "column name")

    def result_metadata(self, result: dict[str, Any]) -> dict[str, dg.MetadataValue]:
        header = f"| {self.group_by} | total | count | average |\n|---|---:|---:|---:|\n"
        rows = "".join(
            f"| {g[self.group_by]} | {g['total']:,.2f} | {g['count']} | {g['average']:,.2f} |\n"
            for g in result["groups"]
        )
        return {"groups": dg.MetadataValue.md(header + rows), "rows": dg.MetadataValue.int(result["rows"])}

    def handle(self, ctx: JobContext) -> dict[str, Any]:
        with ctx.connect() as connection:
            preparer = connection.dialect.identifier_preparer
            group, value = preparer.quote(self.group_by), preparer.quote(self.value_column)
            table = allowed_table(self.table, ctx.settings.allowed_schemas).quoted(connection.dialect)
            frame = pd.read_sql_query(
                sa.text(f"SELECT {group} AS grp, {value} AS val FROM {table}"),  # noqa: S608 (quoted identifiers)
                connection,
            )
        frame["val"] = frame["val"].astype(float)
        groups = (
            frame.groupby("grp", dropna=False)["val"]
            .agg(total="sum", count="count", average="mean")
            .sort_values("total", ascending=not self.descending)
            .reset_index()
        )
        return {
            "table": self.table,
            "group_by": self.group_by,
            "value_column": self.value_column,
            "rows": len(frame),
            "groups": [
                {
                    self.group_by: row.grp,
                    "total": round(float(row.total), 2),
                    "count": int(row.count),
                    "average": round(float(row.average), 2),
                }
                for row in groups.itertuples(index=False)
            ],
        }
