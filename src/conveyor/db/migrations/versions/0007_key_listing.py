"""Paged key listings: ListApiKeys reads keys newest first by (create_time, id) after a
keyset cursor, for every owner or for one, so each order gets an index that a page's
range scan starts on. Key ids are random (UUIDv4), so unlike jobs' and schedules' ids they
say nothing of time, and `create_time` alone is not unique. Keys are few and written
rarely (create, revoke, set limits), so the two indexes cost next to nothing.

Job attempts need none: they page by their primary key (job_id, attempt).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_api_keys_create_time_id", "api_keys", ["create_time", "id"])
    op.create_index("ix_api_keys_owner_create_time_id", "api_keys", ["owner", "create_time", "id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_owner_create_time_id", "api_keys")
    op.drop_index("ix_api_keys_create_time_id", "api_keys")
