"""Artifacts and retention: the files a job made (`job_artifacts`), results kept in the
object store (`jobs.result_ref`), how long a finished job is kept (`jobs.retention_ms`),
and when each finished job expires (`job_expiry`).

The expiry times live in a table of their own, inserted by the statement that finishes a
job, rather than in an index on `jobs`: an index over `finish_time` would make every
outcome update touch an index and lose PostgreSQL's in-place (HOT) update, the cheapest
write on the hot path. The sweeper reads `job_expiry` by time, so a sweep reads only what
it deletes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retention_ms", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("result_ref", sa.String(256), nullable=True))
    op.create_table(
        "job_expiry",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("expire_time", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_job_expiry_expire_time", "job_expiry", ["expire_time"])
    op.create_table(
        "job_artifacts",
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_artifacts")
    op.drop_table("job_expiry")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_ref")
        batch.drop_column("retention_ms")
