"""Job labels: what a client tagged a job with (`jobs.labels`, a JSON object, `{}` for
every existing job), and on PostgreSQL a GIN index over it, so that a label filter
(`labels.team = "billing"`, JSONB containment) reads the index rather than the table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    labels = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("labels", labels, nullable=False, server_default="{}"))
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_jobs_labels", "jobs", ["labels"], postgresql_using="gin",
            postgresql_ops={"labels": "jsonb_path_ops"},
        )  # fmt: skip


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_jobs_labels", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("labels")
