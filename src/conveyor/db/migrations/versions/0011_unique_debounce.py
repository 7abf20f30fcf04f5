"""Unique and debounced jobs (SubmitJobRequest.unique_for, .debounce): `jobs.key_until`,
until when a unique job holds its idempotency key (NULL: for as long as the row lives, as
every keyed job before this did), and `jobs.debounce_ms`, the debounce of a debounced job
(NULL: not one). Both stay NULL for every other job, so ordinary submits write nothing new
(their statements do not name the columns) and no index changes: the key's uniqueness is
still the constraint on (owner, idempotency_key); a job whose window has passed gives its
key up (the column set to NULL) in the transaction that inserts its successor (see
conveyor.jobs.unique).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("key_until", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("debounce_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("debounce_ms")
        batch.drop_column("key_until")
