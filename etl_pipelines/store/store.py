"""Reads and writes of the job table. Which changes are allowed is lifecycle/events.py's business:
`transition()` only makes a checked change atomic and audited."""

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from etl_pipelines.store.engine import create_engine, get_engine
from etl_pipelines.store.models import Base, JobEvent, JobRecord, JobStatus, TableClaim, utcnow

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
    """The job table at `url` (created on first use)."""

    def __init__(self, url: str, engine: sa.Engine | None = None):
        self.url = url
        if engine is not None:  # an engine of the caller's (the unit tier's in-memory SQLite)
            self.engine = engine
            create_schema(engine)
            return
        self.engine = get_engine(url)
        if url not in _schema_ready:
            create_schema(self.engine)
            _schema_ready.add(url)

    @classmethod
    def in_memory(cls) -> "JobStore":
        """A job table of its own in memory (SQLite): for tests of the rules, no service needed."""
        return cls("sqlite://", engine=create_engine("sqlite://"))

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def insert(self, record: JobRecord, *, action: str, actor: str = SYSTEM_ACTOR) -> bool:
        """Insert a new record with its first audit row; False if a record with its id exists."""
        try:
            with self._session() as session, session.begin():
                session.add(record)
                session.add(_event(record, action, None, actor, None))
        except sa.exc.IntegrityError:
            return False
        return True

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
        with self._session() as session, session.begin():
            session.execute(sa.delete(JobRecord).where(JobRecord.id == job_id))

    def list(
        self,
        *,
        statuses: Iterable[JobStatus] = (),
        queue: str | None = None,
        job_type: str | None = None,
        limit: int = 50,
    ) -> Sequence[JobRecord]:
        """Records matching the filters, newest first."""
        query = sa.select(JobRecord).order_by(JobRecord.created_at.desc(), JobRecord.id).limit(limit)
        statuses = list(statuses)
        if statuses:
            query = query.where(JobRecord.status.in_(statuses))
        if queue:
            query = query.where(JobRecord.queue == queue)
        if job_type:
            query = query.where(JobRecord.job_type == job_type)
        with self._session() as session:
            return session.scalars(query).all()

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
        """
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
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
                values = {**changes(record), **values}
            for key, value in values.items():
                setattr(record, key, value)
            record.updated_at = utcnow()
            session.add(_event(record, action, before, actor, reason))
        return record

    def heartbeat(self, job_id: str, run_id: str) -> bool:
        """The attempt in `run_id` is alive (no audit row: not a change of state)."""
        with self._session() as session, session.begin():
            changed = _rowcount(
                session,
                sa.update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.run_id == run_id)
                .where(JobRecord.status == JobStatus.STARTED)
                # updated_at stays: a beat is not a change of the job (recovery's grace reads it).
                .values(heartbeat_at=utcnow(), updated_at=JobRecord.updated_at)
                .execution_options(synchronize_session=False),
            )
        return changed == 1

    def record_event(
        self, job_id: str, action: str, *, actor: str = SYSTEM_ACTOR, reason: str | None = None
    ) -> None:
        """Append an audit row that changes no status (e.g. a retry whose submission failed)."""
        record = self.require(job_id)
        with self._session() as session, session.begin():
            session.add(_event(record, action, record.status, actor, reason))

    def history(self, job_id: str) -> Sequence[JobEvent]:
        """The job's audit trail, oldest first."""
        self.require(job_id)
        query = sa.select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        with self._session() as session:
            return session.scalars(query).all()

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
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            record.alerted_at = utcnow()
        return record

    # -- one run per table (lifecycle.admission holds the rules) ---------------------------------

    def join_line(self, run_id: str, job_id: str, target: str, priority: int) -> None:
        """Put `run_id` in line for `target` (nothing if it already has its place)."""
        try:
            with self._session() as session, session.begin():
                claim = TableClaim(run_id=run_id, job_id=job_id, target=target, priority=priority)
                session.add(claim)
        except sa.exc.IntegrityError:
            pass  # submitted again (recovery): its place is kept

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
        with self._session() as session, session.begin():
            claim = session.get(TableClaim, run_id)
            if claim is not None:
                session.delete(claim)
            return claim

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


def _rowcount(session: Session, statement: sa.Update) -> int:
    """Rows an UPDATE changed (SQLAlchemy types execute() as a plain Result)."""
    return cast("sa.CursorResult[Any]", session.execute(statement)).rowcount


def _event(
    record: JobRecord, action: str, before: JobStatus | None, actor: str, reason: str | None
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
    )


def create_schema(engine: sa.Engine) -> None:
    """Create the job table and its indexes where missing (safe to race from several processes)."""
    try:
        Base.metadata.create_all(engine)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        # Two processes created it at once (PostgreSQL reports a duplicate type or relation);
        # the second attempt finds everything in place.
        Base.metadata.create_all(engine)
