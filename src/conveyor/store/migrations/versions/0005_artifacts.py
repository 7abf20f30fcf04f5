"""Artifacts and retention: the files a job made (`job_artifacts`), results kept in the
object store (`jobs.result_ref`), and how long a finished job is kept (`jobs.retention_ms`).

The sweeper finds expired jobs through an expression index on `finish_time + retention_ms`,
partial on both being set, so a sweep reads only what it deletes.

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
    op.create_index(
        "ix_jobs_expiry",
        "jobs",
        [sa.text("(finish_time + retention_ms)")],
        postgresql_where=sa.text("finish_time IS NOT NULL AND retention_ms IS NOT NULL"),
        sqlite_where=sa.text("finish_time IS NOT NULL AND retention_ms IS NOT NULL"),
    )
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
    op.drop_index("ix_jobs_expiry", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result_ref")
        batch.drop_column("retention_ms")
