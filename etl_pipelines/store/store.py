"""Reads and writes of the job table. Every status change goes through here."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from etl_pipelines.store.engine import get_engine
from etl_pipelines.store.models import Base, JobRecord, JobStatus, utcnow

_schema_ready: set[str] = set()


class JobNotFoundError(LookupError):
    """No job with that id in the job table."""


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
            updated_at=now,
        )
        with self._session() as session, session.begin():
            session.add(record)
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

    def _update(self, job_id: str, **values: Any) -> JobRecord:
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            for key, value in values.items():
                setattr(record, key, value)
            record.updated_at = utcnow()
        return record

    def mark_queued(self, job_id: str, run_id: str, payload: dict[str, Any] | None = None) -> JobRecord:
        """A new run of the job was submitted (a re-execution appends to run_ids)."""
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if run_id not in record.run_ids:
                record.run_ids = [*record.run_ids, run_id]
                record.run_id = run_id
                record.status = JobStatus.QUEUED
                # A new run starts from a clean slate: the last outcome no longer describes it.
                record.result = record.error = record.traceback = None
                record.finished_at = record.next_retry_at = record.alerted_at = None
                if payload is not None:
                    record.payload = payload
                record.updated_at = utcnow()
        return record

    def mark_started(self, job_id: str, run_id: str, retry_count: int) -> JobRecord:
        """An attempt began: `retry_count` retries were performed before it."""
        with self._session() as session, session.begin():
            record = session.get(JobRecord, job_id, with_for_update=True)
            if record is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            now = utcnow()
            if run_id not in record.run_ids:
                record.run_ids = [*record.run_ids, run_id]
            record.run_id = run_id
            record.status = JobStatus.STARTED
            record.retry_count = retry_count
            record.next_retry_at = None
            record.started_at = record.started_at or now
            record.finished_at = None
            record.updated_at = now
        return record

    def mark_waiting_retry(
        self, job_id: str, *, error: str, traceback: str, next_retry_at: datetime
    ) -> JobRecord:
        """An attempt failed and another is due at `next_retry_at`."""
        return self._update(
            job_id,
            status=JobStatus.WAITING_RETRY,
            error=error,
            traceback=traceback,
            next_retry_at=next_retry_at,
        )

    def mark_completed(self, job_id: str, result: Any) -> JobRecord:
        """The job succeeded with `result` (JSON)."""
        return self._update(
            job_id,
            status=JobStatus.COMPLETED,
            result=result,
            error=None,
            traceback=None,
            next_retry_at=None,
            finished_at=utcnow(),
        )

    def mark_failed(self, job_id: str, *, error: str, traceback: str | None) -> JobRecord:
        """The job failed for good (no retry left)."""
        return self._update(
            job_id,
            status=JobStatus.FAILED,
            error=error,
            traceback=traceback,
            next_retry_at=None,
            finished_at=utcnow(),
        )

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
        """The failure alert was delivered."""
        return self._update(job_id, alerted_at=utcnow())

    def mark_cancelled(self, job_id: str) -> JobRecord:
        """The job's run was cancelled before it ended."""
        return self._update(job_id, status=JobStatus.CANCELLED, next_retry_at=None, finished_at=utcnow())


def create_schema(engine: sa.Engine) -> None:
    """Create the job table and its indexes where missing (safe to race from several processes)."""
    try:
        Base.metadata.create_all(engine)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
        # Two processes created it at once (PostgreSQL reports a duplicate type or relation);
        # the second attempt finds everything in place.
        Base.metadata.create_all(engine)
