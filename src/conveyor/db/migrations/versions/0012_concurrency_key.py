"""Concurrency keys: the key a job was submitted with (`jobs.concurrency_key`, "" for every
existing job) and a queue's cap on the running jobs of one key (`queues.max_running_per_key`,
0, no cap, for every existing queue). Claims enforce the cap in Redis; the database keeps
both so that a job restored from its row, and a queue's settings re-applied by the
reconciler, keep them. No index: nothing looks jobs up by their key in SQL yet.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("concurrency_key", sa.String(256), nullable=False, server_default="")
        )
    with op.batch_alter_table("queues") as batch:
        batch.add_column(
            sa.Column("max_running_per_key", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("queues") as batch:
        batch.drop_column("max_running_per_key")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("concurrency_key")
