"""Reliability and keys: fences and retry policies on jobs, attempt history, once-markers,
and a description and rate limits per API key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_LIMITS = ("submit_per_second", "submit_burst", "read_per_second", "read_burst")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fence", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retry", _JSON, nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("description", sa.String(256), nullable=False, server_default="")
        )
        for name in _LIMITS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
    op.create_table(
        "job_attempts",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("attempt", sa.SmallInteger(), primary_key=True),
        sa.Column("outcome", sa.SmallInteger(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("finish_time", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False, server_default=""),
        sa.Column("traceback", sa.Text(), nullable=False, server_default=""),
    )
    op.create_table(
        "job_effects",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(256), primary_key=True),
        sa.Column("attempt", sa.SmallInteger(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_effects")
    op.drop_table("job_attempts")
    with op.batch_alter_table("api_keys") as batch:
        for name in _LIMITS:
            batch.drop_column(name)
        batch.drop_column("description")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry")
        batch.drop_column("fence")
