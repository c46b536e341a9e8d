"""Admission: when a submitted run may start. No Dagster here.

A run without a target table starts at once: it goes to its Celery priority queue the moment it
is submitted, and the broker holds the backlog in strict priority order. A run with a target
table starts at once only if no other run holds that table; otherwise it waits in the table's
line (its Dagster run stays QUEUED, where an operator sees it) and starts when the holder's
attempt ends and hands the table on: first by priority, then by submission. The job table's
database keeps the line (store.TableClaim), so every process that submits or ends a run agrees.

| event                                   | the line                         | who starts next           |
| --------------------------------------- | -------------------------------- | ------------------------- |
| run submitted, table free               | joins and holds                  | the run itself, now       |
| run submitted, table held               | joins, waits                     | -                         |
| holder's attempt ends (op, worker, crash| leaves; first in line holds      | that run, by whoever saw  |
|   found by recovery, cancel)            |                                  |   the end                 |
| waiting run cancelled                   | leaves                           | -                         |

Tables are keyed as the target database sees them (`table_key`): `users` and `public.users` are
one table on PostgreSQL, and `USERS` is `users` on SQLite.
"""

from etl_pipelines.identifiers import TableName
from etl_pipelines.store import JobStore

# The schema an unqualified name resolves to, per dialect (PostgreSQL's default search_path).
DEFAULT_SCHEMAS = {"postgresql": "public", "sqlite": "main"}
# Dialects that fold every identifier's case (SQLite's names are case-insensitive). PostgreSQL folds
# only unquoted names, and etl_pipelines quotes any name with capitals, so there `USERS` is its own table.
CASE_FOLDING = frozenset({"sqlite"})


def table_key(target: str, dialect: str) -> str:
    """The one key of the table `target` names in a database of `dialect` (schema.table)."""
    table = TableName.parse(target)
    schema = table.schema or DEFAULT_SCHEMAS.get(dialect, "")
    key = f"{schema}.{table.name}" if schema else table.name
    return key.lower() if dialect in CASE_FOLDING else key


def enter(store: JobStore, run_id: str, job_id: str, target: str, priority: int) -> str | None:
    """A run on `target` (a table_key) was submitted: the run that may start now, which the
    caller starts (this one if the table was free), or None: it waits in line.

    Exactly one process starts each run: the one whose promotion made it the holder. So of two
    runs submitted for one table at the same instant exactly one starts, once. A run found first
    in line with nobody holding the table (whoever should have handed it on died) is returned
    instead, and this one waits behind it.
    """
    store.join_line(run_id, job_id, target, priority)
    return store.promote(target)


def release(store: JobStore, run_id: str) -> str | None:
    """`run_id`'s attempt ended (or it was cancelled): it leaves its table's line. The run that now
    holds the table, which the caller must start, or None (line empty, or it did not hold)."""
    claim = store.leave_line(run_id)
    if claim is None or not claim.holding:
        return None
    return store.promote(claim.target)


def waiting(store: JobStore, run_id: str) -> bool:
    """Is `run_id` waiting in a table's line (so it is not in the broker, by design)?"""
    claim = store.claim(run_id)
    return claim is not None and not claim.holding
