"""Reads and writes of the job table. Every status change goes through here."""

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from etl_pipelines.store.engine import get_engine
from etl_pipelines.store.models import Base, JobEvent, JobRecord, JobStatus, utcnow

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

    def __init__(self, url: str):
        self.url = url
        self.engine = get_engine(url)
        if url not in _schema_ready:
            create_schema(self.engine)
            _schema_ready.add(url)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def create(
        self,
        *,
        id: str,
        job_type: str,
        job_class: str,
        queue: str,
        payload: dict[str, Any],
        max_retries: int,
        run_id: str | None = None,
        status: JobStatus = JobStatus.QUEUED,
        created_at: datetime | None = None,
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
    ) -> JobRecord:
        """Insert a new job record."""
        now = utcnow()
        record = JobRecord(
            id=id,
            job_type=job_type,
            job_class=job_class,
            queue=queue,
            status=status,
            payload=payload,
            max_retries=max_retries,
            retry_count=0,
            run_id=run_id,
            run_ids=[run_id] if run_id else [],
            created_at=created_at or now,
            queued_at=created_at or now,
            updated_at=now,
        )
        with self._session() as session, session.begin():
            session.add(record)
            session.add(_event(record, "queued", None, actor, reason))
        return record

    def ensure(self, **fields: Any) -> JobRecord:
        """The record with `fields["id"]`, inserted with `fields` if it does not exist yet."""
        record = self.get(fields["id"])
        if record is not None:
            return record
        try:
            return self.create(**fields)
        except sa.exc.IntegrityError:
            # Another process inserted it between our read and our insert.
            return self.require(fields["id"])

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

    def _transition(
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
            conditions = []
            if expect is not None:
                expected = set(expect)
                conditions.append(JobRecord.status.in_(expected))
            if expect_run_id is not ANY_RUN:
                conditions.append(JobRecord.run_id == expect_run_id)
            if unchanged_since is not None:
                conditions.append(JobRecord.updated_at == unchanged_since)
            if conditions:
                # A conditional UPDATE makes the check atomic on SQLite too, which has no row locks.
                changed = session.execute(
                    sa.update(JobRecord)
                    .where(JobRecord.id == job_id, *conditions)
                    .values(updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount
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

    def mark_queued(
        self,
        job_id: str,
        run_id: str,
        payload: dict[str, Any] | None = None,
        *,
        parent_run_id: str | None = None,
        expect: Iterable[JobStatus] | None = None,
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
    ) -> JobRecord:
        """A new run of the job was submitted (a re-execution appends to run_ids).

        With `parent_run_id` the job must still be on that run (the run re-executed), so of two
        re-executions of one run only the first takes the job. A finished job run again (a UI
        re-execution) gets its whole retry schedule again.
        """

        def changes(record: JobRecord) -> dict[str, Any]:
            values: dict[str, Any] = {
                "run_ids": [*record.run_ids, run_id],
                "run_id": run_id,
                "status": JobStatus.QUEUED,
                "queued_at": record.queued_at if record.status == JobStatus.QUEUED else utcnow(),
                # A new run starts from a clean slate: the last outcome no longer describes it.
                "result": None,
                "error": None,
                "traceback": None,
                "finished_at": None,
                "next_retry_at": None,
                "alerted_at": None,
                "heartbeat_at": None,
            }
            if payload is not None:
                values["payload"] = payload
            if record.status.is_final:
                values["retry_count"] = 0
            return values

        record = self.require(job_id)
        if run_id in record.run_ids:
            return record
        return self._transition(
            job_id,
            "run_queued",
            expect=expect,
            expect_run_id=parent_run_id if parent_run_id is not None else ANY_RUN,
            actor=actor,
            reason=reason,
            changes=changes,
        )

    def mark_started(self, job_id: str, run_id: str) -> JobRecord:
        """An attempt began in run `run_id`, which must be the job's queued run (else JobStateError)."""
        now = utcnow()
        return self._transition(
            job_id,
            "started",
            expect=[JobStatus.QUEUED],
            expect_run_id=run_id,
            changes=lambda record: {"started_at": record.started_at or now},
            status=JobStatus.STARTED,
            next_retry_at=None,
            finished_at=None,
            heartbeat_at=now,
        )

    def heartbeat(self, job_id: str, run_id: str) -> bool:
        """The attempt in `run_id` is alive (no audit row: not a change of state)."""
        with self._session() as session, session.begin():
            changed = session.execute(
                sa.update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.run_id == run_id)
                .where(JobRecord.status == JobStatus.STARTED)
                # updated_at stays: a beat is not a change of the job (recovery's grace reads it).
                .values(heartbeat_at=utcnow(), updated_at=JobRecord.updated_at)
                .execution_options(synchronize_session=False)
            ).rowcount
        return changed == 1

    def mark_waiting_retry(
        self,
        job_id: str,
        *,
        error: str,
        traceback: str | None,
        next_retry_at: datetime,
        expect: Iterable[JobStatus] | None = None,
        expect_run_id: Any = ANY_RUN,
        reason: str | None = None,
    ) -> JobRecord:
        """An attempt failed and another is due at `next_retry_at`."""
        return self._transition(
            job_id,
            "waiting_retry",
            expect=expect,
            expect_run_id=expect_run_id,
            reason=reason or error,
            status=JobStatus.WAITING_RETRY,
            error=error,
            traceback=traceback,
            next_retry_at=next_retry_at,
            heartbeat_at=None,
        )

    def claim_retry(
        self,
        job_id: str,
        *,
        expect: Iterable[JobStatus],
        retry_count: int,
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
        action: str = "retry",
    ) -> JobRecord:
        """Take the job for a new run: its status becomes queued unless another process took it first.

        The new run is submitted after this; `mark_queued` then records its id.
        """
        return self._transition(
            job_id,
            action,
            expect=expect,
            actor=actor,
            reason=reason,
            status=JobStatus.QUEUED,
            queued_at=utcnow(),
            retry_count=retry_count,
            next_retry_at=None,
            heartbeat_at=None,
        )

    def mark_completed(
        self,
        job_id: str,
        result: Any,
        *,
        expect: Iterable[JobStatus] | None = None,
        expect_run_id: Any = ANY_RUN,
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
        action: str = "completed",
    ) -> JobRecord:
        """The job succeeded with `result` (JSON), or someone resolved it by hand."""
        return self._transition(
            job_id,
            action,
            expect=expect,
            expect_run_id=expect_run_id,
            actor=actor,
            reason=reason,
            status=JobStatus.COMPLETED,
            result=result,
            error=None,
            traceback=None,
            next_retry_at=None,
            heartbeat_at=None,
            finished_at=utcnow(),
        )

    def mark_failed(
        self,
        job_id: str,
        *,
        error: str,
        traceback: str | None,
        expect: Iterable[JobStatus] | None = None,
        expect_run_id: Any = ANY_RUN,
        actor: str = SYSTEM_ACTOR,
        action: str = "failed",
    ) -> JobRecord:
        """The job failed for good (no retry left)."""
        return self._transition(
            job_id,
            action,
            expect=expect,
            expect_run_id=expect_run_id,
            actor=actor,
            reason=error,
            status=JobStatus.FAILED,
            error=error,
            traceback=traceback,
            next_retry_at=None,
            heartbeat_at=None,
            finished_at=utcnow(),
        )

    def mark_cancelled(self, job_id: str, run_id: str, *, reason: str | None = None) -> JobRecord:
        """The job's run `run_id` was cancelled before it ended (JobStateError if the job moved on)."""
        return self._transition(
            job_id,
            "cancelled",
            expect=[JobStatus.QUEUED, JobStatus.STARTED],
            expect_run_id=run_id,
            reason=reason,
            status=JobStatus.CANCELLED,
            next_retry_at=None,
            heartbeat_at=None,
            finished_at=utcnow(),
        )

    def claim_recovery(self, seen: JobRecord, reason: str) -> JobRecord:
        """Take a job recovery found lost, as it was seen: JobStateError if anything changed since
        (its worker started it, another recoverer or a sensor got there first)."""
        return self._transition(
            seen.id,
            "recovering",
            expect=[seen.status],
            expect_run_id=seen.run_id,
            unchanged_since=seen.updated_at,
            reason=reason,
        )

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
