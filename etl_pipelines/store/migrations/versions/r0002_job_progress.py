"""etl_jobs.progress: what a running attempt reports of its work so far (JSON, nullable).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A table made by the unreleased tree between 3601def and migrations (create_schema's
    # ALTER) has it already, un-versioned: baselined to 0001, it must not fail here.
    if "progress" in {column["name"] for column in sa.inspect(op.get_bind()).get_columns("etl_jobs")}:
        return
    if op.get_bind().dialect.name == "postgresql":
        # The ALTER waits for every transaction on etl_jobs, and everything after it waits for the
        # ALTER: an old worker's long transaction would stall the deployment. Give up instead
        # (the upgrade fails whole, nothing changed; stop the old processes and run it again).
        op.execute("SET LOCAL lock_timeout = '15s'")
    # Nullable and without a default: PostgreSQL adds it without rewriting the table.
    with op.batch_alter_table("etl_jobs") as batch:
        batch.add_column(sa.Column("progress", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("etl_jobs") as batch:
        batch.drop_column("progress")
