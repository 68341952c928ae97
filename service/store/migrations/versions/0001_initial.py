"""Initial regtune schema: users, tokens, jobs, trials, events.

Written out by hand rather than importing ``service.store.schema``: a migration
must keep describing the schema of its day after the model moves on. The test
suite checks that head reproduces the model exactly.

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "regtune_users",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_regtune_users"),
        sa.UniqueConstraint("name", name="uq_regtune_users_name"),
    )
    op.create_table(
        "regtune_tokens",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_regtune_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["regtune_users.id"], ondelete="CASCADE",
                                name="fk_regtune_tokens_user_id_regtune_users"),
        sa.UniqueConstraint("token_hash", name="uq_regtune_tokens_token_hash"),
    )
    op.create_index("ix_regtune_tokens_user_id", "regtune_tokens", ["user_id"])

    op.create_table(
        "regtune_jobs",
        sa.Column("pk", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("num_trials", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("ray_submission_id", sa.String(200), nullable=True),
        sa.Column("mlflow_experiment_id", sa.String(64), nullable=True),
        sa.Column("mlflow_parent_run_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("best", sa.JSON, nullable=True),
        sa.Column("event_seq", sa.Integer, nullable=False),
        sa.Column("trial_count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_regtune_jobs"),
        sa.UniqueConstraint("id", name="uq_regtune_jobs_id"),
        sa.UniqueConstraint("owner", "idempotency_key",
                            name="uq_regtune_jobs_owner_idempotency_key"),
    )
    op.create_index("ix_regtune_jobs_status_pk", "regtune_jobs", ["status", "pk"])
    op.create_index("ix_regtune_jobs_owner_pk", "regtune_jobs", ["owner", "pk"])

    op.create_table(
        "regtune_trials",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("trial_id", sa.String(200), nullable=False),
        sa.Column("trial_index", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("iteration", sa.Integer, nullable=False),
        sa.Column("objective", sa.Float, nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("node", sa.String(200), nullable=True),
        sa.Column("gpu_ids", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "trial_id", name="pk_regtune_trials"),
        sa.ForeignKeyConstraint(["job_id"], ["regtune_jobs.id"], ondelete="CASCADE",
                                name="fk_regtune_trials_job_id_regtune_jobs"),
        sa.UniqueConstraint("job_id", "trial_index",
                            name="uq_regtune_trials_job_id_trial_index"),
    )
    op.create_index("ix_regtune_trials_status", "regtune_trials", ["status"])

    op.create_table(
        "regtune_events",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "seq", name="pk_regtune_events"),
        sa.ForeignKeyConstraint(["job_id"], ["regtune_jobs.id"], ondelete="CASCADE",
                                name="fk_regtune_events_job_id_regtune_jobs"),
    )


def downgrade() -> None:
    op.drop_table("regtune_events")
    op.drop_index("ix_regtune_trials_status", table_name="regtune_trials")
    op.drop_table("regtune_trials")
    op.drop_index("ix_regtune_jobs_owner_pk", table_name="regtune_jobs")
    op.drop_index("ix_regtune_jobs_status_pk", table_name="regtune_jobs")
    op.drop_table("regtune_jobs")
    op.drop_index("ix_regtune_tokens_user_id", table_name="regtune_tokens")
    op.drop_table("regtune_tokens")
    op.drop_table("regtune_users")
