"""Index trials by (job_id, status): a job's trial counts from the index alone.

Every ``GET /v1/jobs/{id}`` counts the job's trials by status. With only the
primary key, that read every trial row of the job (1,000 per job at the service's
limit); this index answers it as a covering index scan (bench B5).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_regtune_trials_job_id_status", "regtune_trials", ["job_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_regtune_trials_job_id_status", table_name="regtune_trials")
