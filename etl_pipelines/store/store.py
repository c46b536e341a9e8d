"""Reads and writes of the job table. Every status change goes through here."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from etl_pipelines.store.engine import get_engine
from etl_pipelines.store.models import Base, JobEvent, JobRecord, JobStatus, utcnow

# The actor of what the system does by itself; people are recorded by OS user or --actor.
SYSTEM_ACTOR = "etl_pipelines"

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
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
        **values: Any,
    ) -> JobRecord:
        """Change the record and append the change to its audit trail, in one transaction.

        With `expect`, the change happens only if the status is one of those (JobStateError
        otherwise, and nothing changes): the check and the write are one locked step.
        """
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            before = record.status
            if expect is not None:
                expected = set(expect)
                # A conditional UPDATE makes the check atomic on SQLite too, which has no row locks.
                changed = session.execute(
                    sa.update(JobRecord)
                    .where(JobRecord.id == job_id, JobRecord.status.in_(expected))
                    .values(updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount
                if changed != 1:
                    wanted = " or ".join(sorted(status.value for status in expected))
                    raise JobStateError(f"job {job_id} is {before.value}, not {wanted}")
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
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
        new_round: bool = False,
    ) -> JobRecord:
        """A new run of the job was submitted (a re-execution appends to run_ids).

        `new_round`: a finished job run again (UI re-execution) gets its whole retry schedule again.
        """
        record = self.require(job_id)
        if run_id in record.run_ids:
            return record
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
        if new_round:
            values["retry_count"] = 0
        return self._transition(job_id, "run_queued", actor=actor, reason=reason, **values)

    def mark_started(self, job_id: str, run_id: str) -> JobRecord:
        """An attempt began in run `run_id`."""
        record = self.require(job_id)
        now = utcnow()
        return self._transition(
            job_id,
            "started",
            run_id=run_id,
            run_ids=record.run_ids if run_id in record.run_ids else [*record.run_ids, run_id],
            status=JobStatus.STARTED,
            next_retry_at=None,
            started_at=record.started_at or now,
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
                .values(heartbeat_at=utcnow())
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
        reason: str | None = None,
    ) -> JobRecord:
        """An attempt failed and another is due at `next_retry_at`."""
        return self._transition(
            job_id,
            "waiting_retry",
            expect=expect,
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
        actor: str = SYSTEM_ACTOR,
        reason: str | None = None,
        action: str = "completed",
    ) -> JobRecord:
        """The job succeeded with `result` (JSON), or someone resolved it by hand."""
        return self._transition(
            job_id,
            action,
            expect=expect,
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
        actor: str = SYSTEM_ACTOR,
        action: str = "failed",
    ) -> JobRecord:
        """The job failed for good (no retry left)."""
        return self._transition(
            job_id,
            action,
            expect=expect,
            actor=actor,
            reason=error,
            status=JobStatus.FAILED,
            error=error,
            traceback=traceback,
            next_retry_at=None,
            heartbeat_at=None,
            finished_at=utcnow(),
        )

    def mark_cancelled(self, job_id: str, *, reason: str | None = None) -> JobRecord:
        """The job's run was cancelled before it ended."""
        return self._transition(
            job_id,
            "cancelled",
            reason=reason,
            status=JobStatus.CANCELLED,
            next_retry_at=None,
            heartbeat_at=None,
            finished_at=utcnow(),
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

    def unfinished(self, since: datetime) -> Sequence[JobRecord]:
        """Jobs queued, started or waiting to retry, changed since `since` (recovery's work list)."""
        query = (
            sa.select(JobRecord)
            .where(JobRecord.status.in_([JobStatus.QUEUED, JobStatus.STARTED, JobStatus.WAITING_RETRY]))
            .where(JobRecord.updated_at >= since)
            .order_by(JobRecord.created_at)
        )
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
