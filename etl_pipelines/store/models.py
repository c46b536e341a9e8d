"""The job table: one row per job, whatever launched it (dispatch, UI, GraphQL, CLI, schedule, sensor)."""

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class JobStatus(enum.StrEnum):
    """Lifecycle: queued -> started -> (waiting_retry -> started)* -> completed | failed; or cancelled."""

    QUEUED = "queued"
    STARTED = "started"
    WAITING_RETRY = "waiting_retry"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the offset; this restores it)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored in the job table; use datetime.now(UTC)")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    """A job: what to run, where it is, and how it ended."""

    # Prefixed so it can share a database with Dagster's own tables (runs, jobs, job_ticks, ...).
    __tablename__ = "etl_jobs"
    __table_args__ = (
        sa.Index("ix_etl_jobs_status_created", "status", "created_at"),
        sa.Index("ix_etl_jobs_queue_status", "queue", "status"),
        sa.Index("ix_etl_jobs_type_created", "job_type", "created_at"),
        sa.Index("ix_etl_jobs_run_id", "run_id"),
        # Queue metrics (etl-jobs stats / metrics): finished and started in the last hour.
        sa.Index("ix_etl_jobs_status_finished", "status", "finished_at"),
        sa.Index("ix_etl_jobs_started", "started_at"),
    )

    # The id of the job's first Dagster run: re-executions keep it (their root run id).
    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    job_type: Mapped[str] = mapped_column(sa.String(100))
    job_class: Mapped[str] = mapped_column(sa.String(255))
    queue: Mapped[str] = mapped_column(sa.String(50))
    status: Mapped[JobStatus] = mapped_column(
        sa.Enum(
            JobStatus,
            native_enum=False,
            length=20,
            values_callable=lambda enum_cls: [member.value for member in enum_cls],
            validate_strings=True,
        )
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[Any | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    retry_count: Mapped[int] = mapped_column(default=0)
    max_retries: Mapped[int] = mapped_column(default=0)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The latest run, and every run in order (re-executions append).
    run_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    run_ids: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When it last entered `queued` (dispatch, a retry, a re-execution): how long it has waited.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # When the failure alert for the latest failure was delivered (None: not yet, or not failed).
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written every ETL_HEARTBEAT_SECONDS by the process running an attempt: a stale heartbeat on a
    # started job means that process is gone (recovery).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What a running attempt reports of its work so far (rows read and written, rows per second,
    # when): written while it runs, kept after it ends; None for job types that report nothing.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (timestamps in ISO 8601)."""
        data: dict[str, Any] = {}
        for column in self.__table__.columns:
            value = getattr(self, column.key)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, JobStatus):
                value = value.value
            data[column.key] = value
        return data


class JobEvent(Base):
    """The audit trail: one row per status change or manual action, appended, never updated."""

    __tablename__ = "etl_job_events"
    __table_args__ = (sa.Index("ix_etl_job_events_job_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.String(36))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What happened: queued, started, waiting_retry, completed, failed, cancelled, retried,
    # marked_completed, recovered, ...
    action: Mapped[str] = mapped_column(sa.String(40))
    from_status: Mapped[str | None] = mapped_column(sa.String(20), nullable=True)
    to_status: Mapped[str | None] = mapped_column(sa.String(20), nullable=True)
    run_id: Mapped[str | None] = mapped_column(sa.String(36), nullable=True)
    # Who: "etl_pipelines" for the system itself, else an OS user or an --actor value.
    actor: Mapped[str] = mapped_column(sa.String(100))
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    # Made by the write that appended the row: a write retried after a lost connection finds its
    # own row here when its first try committed after all (JobStore.transition), instead of
    # being refused by the change it made itself. Added to older tables by create_schema.
    token: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "at": self.at.isoformat(),
            "action": self.action,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "run_id": self.run_id,
            "actor": self.actor,
            "reason": self.reason,
        }


class TableClaim(Base):
    """A run's place in line for its target table: at most one run per table holds it.

    A targeted run gets its row when it is submitted; the row holds the table (`holding`) or waits
    behind the holder, in priority then submission order, until the holder's attempt ends and
    releases it. The partial unique index makes "one holder per table" the database's guarantee.
    """

    __tablename__ = "etl_table_claims"
    __table_args__ = (
        sa.Index(
            "ux_etl_table_claims_holder",
            "target",
            unique=True,
            postgresql_where=sa.text("holding"),
            sqlite_where=sa.text("holding"),
        ),
        sa.Index("ix_etl_table_claims_line", "target", "holding", "priority", "queued_at"),
    )

    run_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(sa.String(36))
    # The normalised table key (lifecycle.admission.table_key): one table, one key.
    target: Mapped[str] = mapped_column(sa.String(200))
    priority: Mapped[int] = mapped_column(default=0)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    holding: Mapped[bool] = mapped_column(default=False)
