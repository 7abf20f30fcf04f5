"""Rate keys: the key a job was submitted with (`jobs.rate_key`, "" for every existing job)
and a queue's rate per key (`queues.rate_per_key_jobs` starts in any window of
`queues.rate_per_key_interval_ms`; 0, none, for every existing queue). Claims enforce the
rate in Redis; the database keeps both so that a job restored from its row, and a queue's
settings re-applied by the reconciler, keep them. No index: nothing looks jobs up by their
rate key in SQL but ListJobs' filter, which also names the owner.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rate_key", sa.String(256), nullable=False, server_default=""))
    with op.batch_alter_table("queues") as batch:
        batch.add_column(
            sa.Column("rate_per_key_jobs", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column(
                "rate_per_key_interval_ms", sa.BigInteger(), nullable=False, server_default="0"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("queues") as batch:
        batch.drop_column("rate_per_key_interval_ms")
        batch.drop_column("rate_per_key_jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rate_key")
