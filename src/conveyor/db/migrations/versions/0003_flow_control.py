"""Flow control and scheduling: queue settings (paused, concurrency caps, rate limit),
API keys' and jobs' concurrency caps, and schedules (recurring jobs).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("key_id", sa.String(36), nullable=False, server_default=""))
        batch.add_column(sa.Column("key_cap", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_running", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "queues",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_running", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rate_jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rate_interval_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("max_running_per_owner", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("description", sa.String(256), nullable=False, server_default=""),
        sa.Column("cron", sa.String(256), nullable=False, server_default=""),
        sa.Column("interval_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("template", _JSON, nullable=False),
        sa.Column("catch_up", sa.SmallInteger(), nullable=False),
        sa.Column("catch_up_limit", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("end_time", sa.BigInteger(), nullable=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("next_run", sa.BigInteger(), nullable=True),
        sa.Column("last_run", sa.BigInteger(), nullable=True),
        sa.Column("last_job_id", sa.String(36), nullable=False, server_default=""),
        sa.Column("last_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_schedules_owner_id", "schedules", ["owner", "id"])
    op.create_index("ix_schedules_next_run", "schedules", ["next_run"])


def downgrade() -> None:
    op.drop_index("ix_schedules_next_run", "schedules")
    op.drop_index("ix_schedules_owner_id", "schedules")
    op.drop_table("schedules")
    op.drop_table("queues")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("max_running")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("key_cap")
        batch.drop_column("key_id")
