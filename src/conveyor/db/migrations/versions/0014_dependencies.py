"""Job dependencies and batches (issue 25).

- `jobs.depends_on`: the ids a job waits for, as the client sees them (Job.depends_on);
  NULL for a job without any (every existing job).
- `jobs.dependency_policy`: DependencyFailurePolicy (0: none given, which cancels).
- `jobs.dependencies_pending`: how many of its dependencies have not ended yet. A job
  with some pending is kept out of Redis (and the reconciler's walk leaves it alone); it
  is released, and enqueued, by the transaction that ends its last one.
- `jobs.has_dependents`: set on a job once another depends on it, so that the statement
  that finishes a job tells its writer, at no extra cost for the rest, whether anything
  waits for it.
- `jobs.batch_id` (indexed): the batch the job is part of, its callback included.
- `job_dependencies`: one row per edge, keyed by the dependency (the lookup when it
  ends), with a partial index of the pending ones (the reconciler's); `state` 0 until it
  ends, then 1 (succeeded, or counted as met), 2 (failed) or 3 (failed and cancelled the
  dependent: what RetryJob's include_dependents revives).
  No foreign key to the dependency: a finished dependency may be deleted by retention
  while its dependents' rows still name it.
- `batches`: a SubmitJobs call's batch and its callback job.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("depends_on", _DOC, nullable=True))
        batch.add_column(
            sa.Column("dependency_policy", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("dependencies_pending", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("has_dependents", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("batch_id", sa.String(36), nullable=True))
    op.create_index("ix_jobs_batch_id", "jobs", ["batch_id"])
    op.create_table(
        "job_dependencies",
        sa.Column("depends_on", sa.String(36), primary_key=True),
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("state", sa.SmallInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_job_dependencies_job_id", "job_dependencies", ["job_id"])
    # The pending edges only: what the reconciler looks through for ends nobody resolved
    # (`DependencyStore.stranded`), however many resolved edges the table holds.
    pending = sa.text("state = 0")
    op.create_index(
        "ix_job_dependencies_pending",
        "job_dependencies",
        ["depends_on"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("job_count", sa.Integer(), nullable=False),
        sa.Column("callback_job_id", sa.String(36), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("batches")
    op.drop_index("ix_job_dependencies_pending", table_name="job_dependencies")
    op.drop_index("ix_job_dependencies_job_id", table_name="job_dependencies")
    op.drop_table("job_dependencies")
    op.drop_index("ix_jobs_batch_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("batch_id")
        batch.drop_column("has_dependents")
        batch.drop_column("dependencies_pending")
        batch.drop_column("dependency_policy")
        batch.drop_column("depends_on")
