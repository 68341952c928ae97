"""Queued jobs per owner, kept with every status change (a submit's queue position).

``SqlJobStore.queue_counts`` answers every submit with its job's place in the fair
queue. It counted the queued jobs per owner, a scan of the queue's index entries
that grew with the queue: 1.42 ms of a submit's CPU at 2,000 queued jobs, twice
``create_job`` (bench B5). The store now keeps the counts in this table, in the
transaction that changes a job's status; the upgrade fills it from the jobs, with
a row for every owner (the queue also looks up each owner's latest start from
them, instead of grouping every job ever started).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "regtune_queue_owners",
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("queued", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_regtune_queue_owners"),
    )
    # Every owner gets a row, 0 when nothing is queued: the rows are also the owners
    # whose latest start the queue looks up (one index seek each).
    op.execute("INSERT INTO regtune_queue_owners (owner, queued) "
               "SELECT owner, SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) "
               "FROM regtune_jobs GROUP BY owner")


def downgrade() -> None:
    op.drop_table("regtune_queue_owners")
