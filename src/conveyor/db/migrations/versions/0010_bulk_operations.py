"""Bulk operations: `bulk_operations`, one row per RetryJobs, CancelJobs or DeleteJobs
started with `force`, holding its filter, its progress (the id it has reached walking
down from the newest job when it started, and its counts) and the lease of the API
process running it, so that the operation outlives that process: another one resumes it
from its last recorded page once the lease runs out (conveyor.api.bulk).

A table rather than Redis: an operation is a record the caller polls and an operator
reads afterwards, as durable as the jobs it changed; Redis may be flushed (DESIGN.md §2).
Rows are few (one per bulk call) and written once a page, so the indexes cost nothing
that matters: (owner, id) for an owner's operations, (state, lease_expire) for the
API processes' look for an abandoned one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("action", sa.SmallInteger(), nullable=False),
        sa.Column("filter", sa.Text(), nullable=False),
        sa.Column("state", sa.SmallInteger(), nullable=False),
        sa.Column("per_second", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("top_id", sa.String(36), nullable=False),
        sa.Column("cursor", sa.String(36), nullable=False, server_default=""),
        sa.Column("matched", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("done", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("failed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=False, server_default=""),
        sa.Column("lease_owner", sa.String(64), nullable=False, server_default=""),
        sa.Column("lease_expire", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("finish_time", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_bulk_operations_owner_id", "bulk_operations", ["owner", "id"])
    op.create_index("ix_bulk_operations_state_lease", "bulk_operations", ["state", "lease_expire"])


def downgrade() -> None:
    op.drop_index("ix_bulk_operations_state_lease", "bulk_operations")
    op.drop_index("ix_bulk_operations_owner_id", "bulk_operations")
    op.drop_table("bulk_operations")
