"""Queue shards: a queue may spread its jobs over several Redis hash tags
(`queues.shards`, 1 for every existing queue), and each job keeps the shard it was put
in (`jobs.shard`, 0 for every existing job: the queue itself). See
conveyor.jobs.shards.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("shard", sa.SmallInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("queues") as batch:
        batch.add_column(sa.Column("shards", sa.SmallInteger, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("queues") as batch:
        batch.drop_column("shards")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("shard")
