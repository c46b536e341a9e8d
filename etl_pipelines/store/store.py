"""Reads and writes of the job table. Which changes are allowed is lifecycle/events.py's business:
`transition()` only makes a checked change atomic and audited."""

import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from etl_pipelines.settings import max_result_bytes as _max_result_bytes
from etl_pipelines.settings import outcome_retry_seconds
from etl_pipelines.store import schema
from etl_pipelines.store.engine import create_engine, get_engine
from etl_pipelines.store.models import JobEvent, JobRecord, JobStatus, TableClaim, utcnow
from etl_pipelines.store.resilience import WritePolicy, retry_write

# The actor of what the system does by itself; people are recorded by OS user or --actor.
SYSTEM_ACTOR = "etl_pipelines"
# `expect_run_id` default: any run (None is a value: a job with no run yet).
ANY_RUN = object()

_schema_ready: set[str] = set()


class JobNotFoundError(LookupError):
    """No job with that id in the job table."""


class JobStateError(ValueError):
    """The job is not in a status that allows the change asked for (nothing was changed)."""


class JobStore:
    """The job table at `url` (created on first use in an empty database).

    Its writes (insert, transition, heartbeat, record_event, mark_alerted, delete, join_line,
    leave_line; not promote) try again through a lost connection for `retry_seconds`
    (ETL_OUTCOME_RETRY_SECONDS, default 120 s), and each lands once however many tries it takes.
    What it stores is bounded (lifecycle.bounds): a result over `max_result_bytes`
    (ETL_MAX_RESULT_BYTES) is kept as a summary; errors, tracebacks and audit reasons lose SQL
    parameters and row values and are cut to their limits.
    """

    def __init__(
        self,
        url: str,
        engine: sa.Engine | None = None,
        *,
        retry_seconds: float | None = None,
        max_result_bytes: int | None = None,
    ):
        self.url = url
        self.write_policy = WritePolicy(
            deadline=outcome_retry_seconds(os.environ) if retry_seconds is None else retry_seconds
        )
        self.max_result_bytes = (
            _max_result_bytes(os.environ) if max_result_bytes is None else max_result_bytes
        )
        # An empty database gets the job table; one older or newer than this code is refused
        # (SchemaVersionError: `etl-jobs db upgrade` upgrades it). Checked once per process.
        if engine is not None:  # an engine of the caller's (the unit tier's in-memory SQLite)
            self.engine = engine
            schema.ensure(engine)
            return
        self.engine = get_engine(url)
        if url not in _schema_ready:
            schema.ensure(self.engine)
            _schema_ready.add(url)

    @classmethod
    def in_memory(cls) -> "JobStore":
        """A job table of its own in memory (SQLite): for tests of the rules, no service needed."""
        return cls("sqlite://", engine=create_engine("sqlite://"))

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _bounded(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` as the job table keeps them (lifecycle.bounds)."""
        from etl_pipelines.lifecycle import bounds  # here: the lifecycle package imports this module

        bounded = dict(values)
        if bounded.get("result") is not None:
            bounded["result"] = bounds.bounded_result(bounded["result"], self.max_result_bytes)
        for key in ("error", "reason"):
            if bounded.get(key) is not None:
                bounded[key] = bounds.scrub_error(bounded[key])
        if bounded.get("traceback") is not None:
            bounded["traceback"] = bounds.scrub_traceback(bounded["traceback"])
        return bounded

    def _write(self, write: Callable[[bool], Any], what: str) -> Any:
        return retry_write(write, self.write_policy, what=what)

    def insert(self, record: JobRecord, *, action: str, actor: str = SYSTEM_ACTOR) -> bool:
        """Insert a new record with its first audit row; False if a record with its id exists."""
        for key, value in self._bounded(
            {"result": record.result, "error": record.error, "traceback": record.traceback}
        ).items():
            setattr(record, key, value)
        token = _token()

        def write(retrying: bool) -> bool:
            try:
                with self._session() as session, session.begin():
                    if retrying:
                        if self._landed(record.id, token, session):
                            return True  # the first try committed; its reply was lost
                        sa.orm.make_transient(record)  # whatever the failed try left it as
                    session.add(record)
                    session.add(_event(record, action, None, actor, None, token))
            except sa.exc.IntegrityError:
                # A retry whose first try committed finds its own record: that is not "exists".
                return retrying and self._landed(record.id, token)
            return True

        return bool(self._write(write, f"insert of job {record.id}"))

    def _landed(self, job_id: str, token: str, session: Session | None = None) -> bool:
        """Whether the write that made `token` committed (its audit row exists)."""
        query = sa.select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.token == token)
        if session is not None:
            return session.scalar(query) is not None
        with self._session() as own:
            return own.scalar(query) is not None

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None."""
        with self._session() as session:
            return session.get(JobRecord, job_id)

    def require(self, job_id: str) -> JobRecord:
        """The record, or JobNotFoundError."""
        record = self.get(job_id)
        if record is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return record

    def delete(self, job_id: str) -> None:
        """Remove a record that never reached a queue (its submission failed)."""

        def write(_retrying: bool) -> None:  # deleted twice is deleted
            with self._session() as session, session.begin():
                session.execute(sa.delete(JobRecord).where(JobRecord.id == job_id))

        self._write(write, f"removal of job {job_id}")

    def list(
        self,
        *,
        statuses: Iterable[JobStatus] = (),
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Sequence[JobRecord]:
        """Records matching the filters, newest first: `limit` of them, after skipping `offset`."""
        query = _filtered(sa.select(JobRecord), statuses, queue, job_type)
        query = query.order_by(JobRecord.created_at.desc(), JobRecord.id).offset(offset).limit(limit)
        with self._session() as session:
            return session.scalars(query).all()

    def count(
        self, *, statuses: Iterable[JobStatus] = (), queue: str | None = None, job_type: str | None = None
    ) -> int:
        """How many records match the filters (list's, without the paging)."""
        query = _filtered(sa.select(sa.func.count()).select_from(JobRecord), statuses, queue, job_type)
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def transition(
        self,
        job_id: str,
        action: str,
        *,
        expect: Iterable[JobStatus] | None = None,
        expect_run_id: Any = ANY_RUN,
        unchanged_since: datetime | None = None,
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
        changes: Callable[[JobRecord], dict[str, Any]] | None = None,
        **values: Any,
    ) -> JobRecord:
        """Change the record and append the change to its audit trail, in one transaction.

        With `expect` (statuses) and/or `expect_run_id` (the run the job must be on), the change
        happens only if the record still matches (JobStateError otherwise, and nothing changes): the
        check and the write are one locked step. `changes(record)` computes values from the record
        as it is under the lock.

        Tried again through a lost connection (see the class); a try that finds the change made
        by an earlier try of its own (committed, its reply lost) returns the record as it is.
        """
        token = _token()
        values = self._bounded({**values, "reason": reason})
        reason = values.pop("reason")

        def write(retrying: bool) -> JobRecord:
            return self._transition(
                job_id,
                action,
                expect=expect,
                expect_run_id=expect_run_id,
                unchanged_since=unchanged_since,
                actor=actor,
                reason=reason,
                changes=changes,
                values=values,
                token=token,
                retrying=retrying,
            )

        return cast(JobRecord, self._write(write, f"{action} of job {job_id}"))

    def _transition(
        self,
        job_id: str,
        action: str,
        *,
        expect: Iterable[JobStatus] | None,
        expect_run_id: Any,
        unchanged_since: datetime | None,
        actor: str,
        reason: str | None,
        changes: Callable[[JobRecord], dict[str, Any]] | None,
        values: dict[str, Any],
        token: str,
        retrying: bool,
    ) -> JobRecord:
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if retrying and self._landed(job_id, token, session):
                return record  # an earlier try committed; its reply was lost with the connection
            conditions: list[sa.ColumnElement[bool]] = []
            if expect is not None:
                expected = set(expect)
                conditions.append(JobRecord.status.in_(expected))
            if expect_run_id is not ANY_RUN:
                conditions.append(JobRecord.run_id == expect_run_id)
            if unchanged_since is not None:
                conditions.append(JobRecord.updated_at == unchanged_since)
            if conditions:
                # A conditional UPDATE makes the check atomic on SQLite too, which has no row locks.
                changed = _rowcount(
                    session,
                    sa.update(JobRecord)
                    .where(JobRecord.id == job_id, *conditions)
                    .values(updated_at=utcnow())
                    .execution_options(synchronize_session=False),
                )
                if changed != 1:
                    session.refresh(record)
                    wanted = []
                    if expect is not None:
                        wanted.append(" or ".join(sorted(status.value for status in expected)))
                    if expect_run_id is not ANY_RUN:
                        wanted.append(f"on run {expect_run_id}")
                    if unchanged_since is not None:
                        wanted.append(f"unchanged since {unchanged_since.isoformat()}")
                    state = record.status.value
                    if expect_run_id is not ANY_RUN:
                        state += f" on run {record.run_id}"
                    raise JobStateError(f"job {job_id} is {state}, not {' '.join(wanted)}")
                session.refresh(record)  # as it is now that we hold the write
            before = record.status
            if changes is not None:
                values = {**self._bounded(changes(record)), **values}
            for key, value in values.items():
                setattr(record, key, value)
            record.updated_at = utcnow()
            session.add(_event(record, action, before, actor, reason, token))
        return record

    def heartbeat(
        self,
        job_id: str,
        run_id: str,
        *,
        retry_seconds: float | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """The attempt in `run_id` is alive (no audit row: not a change of state), and how far its
        work has come (`progress`, if it reported something new).

        Tried again through a lost connection like every write, for `retry_seconds` if given (a
        beater that beats again soon anyway may want less than the store's deadline).
        """
        policy = self.write_policy
        if retry_seconds is not None:
            policy = WritePolicy(deadline=retry_seconds)

        def write(_retrying: bool) -> bool:  # a beat written twice is one beat
            with self._session() as session, session.begin():
                changed = _rowcount(
                    session,
                    sa.update(JobRecord)
                    .where(JobRecord.id == job_id, JobRecord.run_id == run_id)
                    .where(JobRecord.status == JobStatus.STARTED)
                    # updated_at stays: a beat is not a change of the job (recovery's grace reads it).
                    .values(
                        heartbeat_at=utcnow(),
                        updated_at=JobRecord.updated_at,
                        **({} if progress is None else {"progress": progress}),
                    )
                    .execution_options(synchronize_session=False),
                )
            return changed == 1

        return bool(retry_write(write, policy, what=f"heartbeat of job {job_id}"))

    def record_event(
        self, job_id: str, action: str, *, actor: str = SYSTEM_ACTOR, reason: str | None = None
    ) -> None:
        """Append an audit row that changes no status (e.g. a retry whose submission failed)."""
        reason = self._bounded({"reason": reason})["reason"]
        token = _token()

        def write(retrying: bool) -> None:
            record = self.require(job_id)
            with self._session() as session, session.begin():
                if retrying and self._landed(job_id, token, session):
                    return
                session.add(_event(record, action, record.status, actor, reason, token))

        self._write(write, f"{action} event of job {job_id}")

    def history(self, job_id: str, *, limit: int | None = None, offset: int = 0) -> Sequence[JobEvent]:
        """The job's audit trail, oldest first (`limit` events from `offset`; None: all)."""
        self.require(job_id)
        query = (
            sa.select(JobEvent)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
            .offset(offset)
            .limit(limit)
        )
        with self._session() as session:
            return session.scalars(query).all()

    def count_history(self, job_id: str) -> int:
        """How many events the job's audit trail holds."""
        query = sa.select(sa.func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def due_retries(self, now: datetime, limit: int = 100) -> Sequence[JobRecord]:
        """Jobs waiting to retry whose retry is due, the longest overdue first."""
        query = (
            sa.select(JobRecord)
            .where(JobRecord.status == JobStatus.WAITING_RETRY)
            .where(JobRecord.next_retry_at <= now)
            .order_by(JobRecord.next_retry_at)
            .limit(limit)
        )
        with self._session() as session:
            return session.scalars(query).all()

    def unfinished(self, since: datetime | None = None) -> Sequence[JobRecord]:
        """Jobs queued, started or waiting to retry (changed since `since`): recovery's work list."""
        query = (
            sa.select(JobRecord)
            .where(JobRecord.status.in_([JobStatus.QUEUED, JobStatus.STARTED, JobStatus.WAITING_RETRY]))
            .order_by(JobRecord.created_at)
        )
        if since is not None:
            query = query.where(JobRecord.updated_at >= since)
        with self._session() as session:
            return session.scalars(query).all()

    def unalerted_failures(self, since: datetime, limit: int = 100) -> Sequence[JobRecord]:
        """Failed jobs, finished after `since`, whose failure alert has not been delivered."""
        query = (
            sa.select(JobRecord)
            .where(JobRecord.status == JobStatus.FAILED)
            .where(JobRecord.alerted_at.is_(None))
            .where(JobRecord.finished_at >= since)
            .order_by(JobRecord.finished_at)
            .limit(limit)
        )
        with self._session() as session:
            return session.scalars(query).all()

    def mark_alerted(self, job_id: str) -> JobRecord:
        """The failure alert was delivered (not a change of state: no audit row)."""

        def write(_retrying: bool) -> JobRecord:  # marked twice is marked
            with self._session() as session, session.begin():
                record = session.get(JobRecord, job_id, with_for_update=True)
                if record is None:
                    raise JobNotFoundError(f"no job with id {job_id!r}")
                record.alerted_at = utcnow()
            return record

        return cast(JobRecord, self._write(write, f"alert mark of job {job_id}"))

    # -- one run per table (lifecycle.admission holds the rules) ---------------------------------

    def join_line(self, run_id: str, job_id: str, target: str, priority: int) -> None:
        """Put `run_id` in line for `target` (nothing if it already has its place)."""

        def write(_retrying: bool) -> None:  # a place taken by an earlier try is kept, like any
            try:
                with self._session() as session, session.begin():
                    claim = TableClaim(run_id=run_id, job_id=job_id, target=target, priority=priority)
                    session.add(claim)
            except sa.exc.IntegrityError:
                pass  # submitted again (recovery): its place is kept

        self._write(write, f"run {run_id} joining the line for {target}")

    def promote(self, target: str) -> str | None:
        """Let the first run in line for `target` hold it, if nobody does: its run id, else None.

        The partial unique index refuses a second holder, so two processes promoting at once
        promote one run between them.
        """
        line = (
            sa.select(TableClaim.run_id)
            .where(TableClaim.target == target, TableClaim.holding.is_(False))
            .order_by(TableClaim.priority.desc(), TableClaim.queued_at, TableClaim.run_id)
            .limit(1)
        )
        holder = sa.select(TableClaim.run_id).where(TableClaim.target == target, TableClaim.holding.is_(True))
        while True:
            with self._session() as session:
                if session.scalar(holder) is not None:
                    return None
                first = session.scalar(line)
            if first is None:
                return None
            try:
                with self._session() as session, session.begin():
                    changed = _rowcount(
                        session,
                        sa.update(TableClaim)
                        .where(TableClaim.run_id == first, TableClaim.holding.is_(False))
                        .values(holding=True),
                    )
            except sa.exc.IntegrityError:
                return None  # another process promoted a run just now
            if changed:
                return first
            # `first` left the line meanwhile (cancelled): look again.

    def leave_line(self, run_id: str) -> TableClaim | None:
        """Take `run_id` out of its table's line (holding or waiting): its claim as it was, or None."""
        seen: list[TableClaim] = []

        def write(_retrying: bool) -> TableClaim | None:
            with self._session() as session, session.begin():
                claim = session.get(TableClaim, run_id)
                if claim is None:
                    # Gone: by an earlier try whose reply was lost, the caller still hands its table on.
                    return seen[0] if seen else None
                seen[:] = [claim]
                session.delete(claim)
                return claim

        return cast("TableClaim | None", self._write(write, f"release of run {run_id}'s table"))

    def claim(self, run_id: str) -> TableClaim | None:
        with self._session() as session:
            return session.get(TableClaim, run_id)

    def claims(self, target: str | None = None) -> Sequence[TableClaim]:
        """Every claim (of `target`), holders first, then the line in order."""
        query = sa.select(TableClaim).order_by(
            TableClaim.target, TableClaim.holding.desc(), TableClaim.priority.desc(), TableClaim.queued_at
        )
        if target is not None:
            query = query.where(TableClaim.target == target)
        with self._session() as session:
            return session.scalars(query).all()


_S = TypeVar("_S", bound=sa.Select[Any])


def _filtered(query: _S, statuses: Iterable[JobStatus], queue: str | None, job_type: str | None) -> _S:
    statuses = list(statuses)
    if statuses:
        query = query.where(JobRecord.status.in_(statuses))
    if queue:
        query = query.where(JobRecord.queue == queue)
    if job_type:
        query = query.where(JobRecord.job_type == job_type)
    return query


def _token() -> str:
    return uuid.uuid4().hex


def _rowcount(session: Session, statement: sa.Update) -> int:
    """Rows an UPDATE changed (SQLAlchemy types execute() as a plain Result)."""
    return cast("sa.CursorResult[Any]", session.execute(statement)).rowcount


def _event(
    record: JobRecord,
    action: str,
    before: JobStatus | None,
    actor: str,
    reason: str | None,
    token: str | None = None,
) -> JobEvent:
    return JobEvent(
        job_id=record.id,
        at=utcnow(),
        action=action,
        from_status=before.value if before is not None else None,
        to_status=record.status.value,
        run_id=record.run_id,
        actor=actor,
        reason=reason,
        token=token,
    )


def create_schema(engine: sa.Engine) -> None:
    """Make the job table or upgrade it to this code's schema (store.schema.upgrade: Alembic
    migrations; safe to run from several processes at once)."""
    schema.upgrade(engine)
