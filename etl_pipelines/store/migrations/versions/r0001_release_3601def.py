"""The job table, audit trail and table line as released at 3601def, before migrations existed.

A database made by that release (or by 1a55b51, without etl_job_events.token) is brought here in
place by store.schema.baseline, which uses `metadata()` below, then stamped 0001.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

# Frozen here, not imported from models.py: models.py is the newest schema, this is 0001's.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _at() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def metadata() -> sa.MetaData:
    """The three tables exactly as 3601def's models made them (create_all, no server defaults)."""
    meta = sa.MetaData()
    sa.Table(
        "etl_jobs",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_type", sa.String(100), nullable=False),
        sa.Column("job_class", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(50), nullable=False),
        # A non-native Enum of JobStatus's values: VARCHAR(20), no CHECK constraint.
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("retry_count", sa.Integer, nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False),
        sa.Column("next_retry_at", _at(), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("run_ids", _JSON, nullable=False),
        sa.Column("created_at", _at(), nullable=False),
        sa.Column("queued_at", _at(), nullable=True),
        sa.Column("started_at", _at(), nullable=True),
        sa.Column("finished_at", _at(), nullable=True),
        sa.Column("updated_at", _at(), nullable=False),
        sa.Column("alerted_at", _at(), nullable=True),
        sa.Column("heartbeat_at", _at(), nullable=True),
        sa.Index("ix_etl_jobs_status_created", "status", "created_at"),
        sa.Index("ix_etl_jobs_queue_status", "queue", "status"),
        sa.Index("ix_etl_jobs_type_created", "job_type", "created_at"),
        sa.Index("ix_etl_jobs_run_id", "run_id"),
        sa.Index("ix_etl_jobs_status_finished", "status", "finished_at"),
        sa.Index("ix_etl_jobs_started", "started_at"),
    )
    sa.Table(
        "etl_job_events",
        meta,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("at", _at(), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        # Added by 3601def's create_schema to tables made before it (1a55b51): nullable.
        sa.Column("token", sa.String(32), nullable=True),
        sa.Index("ix_etl_job_events_job_id", "job_id", "id"),
    )
    sa.Table(
        "etl_table_claims",
        meta,
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("queued_at", _at(), nullable=False),
        sa.Column("holding", sa.Boolean, nullable=False),
        sa.Index(
            "ux_etl_table_claims_holder",
            "target",
            unique=True,
            postgresql_where=sa.text("holding"),
            sqlite_where=sa.text("holding"),
        ),
        sa.Index("ix_etl_table_claims_line", "target", "holding", "priority", "queued_at"),
    )
    return meta


def upgrade() -> None:
    metadata().create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    metadata().drop_all(op.get_bind(), checkfirst=False)
