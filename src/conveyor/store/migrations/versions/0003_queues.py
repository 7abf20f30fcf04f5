"""Queue settings: paused, concurrency cap and rate limit per named queue.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queues",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_running", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rate_jobs", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("rate_interval_ms", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("update_time", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("queues")
