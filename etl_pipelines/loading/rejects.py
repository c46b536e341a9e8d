"""Rejected rows: counted by reason, the first few thousand kept with their line and text."""

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from etl_pipelines.identifiers import TableName

# Rows kept with their text (all are counted): enough to see every kind of problem in a file,
# bounded however broken the file is.
KEEP = 1000
TEXT_CHARS = 1000


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str  # "<column>: 'n/a' is not a float", "malformed: 6 fields, the header has 5", ...
    text: str  # the row's loaded fields as read (bounded)


@dataclass
class Rejects:
    """Every rejected row counted by kind (`reason` up to its value); the first `keep` kept."""

    keep: int = KEEP
    count: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    kept: list[Reject] = field(default_factory=list)

    def room(self) -> int:
        return self.keep - len(self.kept)

    def add(self, kind: str, line: int, reason: str, text: str, *, counted: bool = True) -> None:
        """A rejected row; `counted=False` for one kept only to be seen (a duplicate left out by
        the merge: not loaded, but not a rejected row either)."""
        if counted:
            self.count += 1
            self.by_kind[kind] += 1
        if len(self.kept) < self.keep:
            self.kept.append(Reject(line, reason, text[:TEXT_CHARS]))

    def counted(self, kind: str, number: int) -> None:
        """`number` more rejects of `kind` whose rows are not kept."""
        self.count += number
        self.by_kind[kind] += number

    def in_order(self) -> list[Reject]:
        return sorted(self.kept, key=lambda r: r.line)

    def summary(self) -> dict[str, Any]:
        """For the result: counts by kind and the first rejected rows."""
        return {
            "by_kind": dict(self.by_kind.most_common()),
            "first": [{"line": r.line, "reason": r.reason} for r in self.in_order()[:10]],
        }


def reject_table(name: TableName) -> sa.Table:
    return sa.Table(
        name.name,
        sa.MetaData(),
        sa.Column("job_id", sa.String(36), nullable=False, index=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row_text", sa.Text, nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        schema=name.schema,
    )


def keep_rejects(
    connection: sa.Connection, name: TableName, job_id: str, run_id: str, rejects: Rejects
) -> None:
    """Replace the job's rows in the reject table with this attempt's (none: an earlier attempt's
    go all the same); the table is created when there is something to keep."""
    table = reject_table(name)
    if not rejects.kept and not sa.inspect(connection).has_table(name.name, schema=name.schema):
        return
    table.create(connection, checkfirst=True)
    connection.execute(table.delete().where(table.c.job_id == job_id))
    now = datetime.now(UTC)
    if rejects.kept:
        connection.execute(
            table.insert(),
            [
                {
                    "job_id": job_id,
                    "run_id": run_id,
                    "line": r.line,
                    "reason": r.reason,
                    "row_text": r.text,
                    "rejected_at": now,
                }
                for r in rejects.in_order()
            ],
        )
