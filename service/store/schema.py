"""The regtune tables, as SQLAlchemy Core metadata.

Every table is prefixed ``regtune_`` and Alembic's version table is
``regtune_alembic_version``, so regtune can live in the same PostgreSQL
database as MLflow's tracking store (which has its own ``alembic_version``)
without either migrating, or dropping, the other's tables.

This module is the model that the migrations must reproduce exactly; a test
runs Alembic's ``compare_metadata`` against a migrated database to prove it.
Constraint names come from a naming convention so they are the same on every
backend and a later migration can refer to them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

TABLE_PREFIX = "regtune_"
VERSION_TABLE = "regtune_alembic_version"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that goes in as UTC and comes out aware, on every backend.

    SQLite stores no zone (and sorts timestamps as text, so they must all be in
    one zone); PostgreSQL answers in the session's zone. Normalising here means
    no caller ever compares a naive datetime with an aware one.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store needs aware UTC times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


users = sa.Table(
    "regtune_users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False, unique=True),
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

tokens = sa.Table(
    "regtune_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("regtune_users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    # SHA-256 hex of the token; the plaintext is never stored.
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
)

jobs = sa.Table(
    "regtune_jobs", metadata,
    # Insertion order: "newest first" must not depend on clocks of different hosts
    # or on two jobs created in the same microsecond.
    sa.Column("pk", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(100), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("num_trials", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("ray_submission_id", sa.String(200), nullable=True),
    sa.Column("mlflow_experiment_id", sa.String(64), nullable=True),
    sa.Column("mlflow_parent_run_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("best", sa.JSON(none_as_null=True), nullable=True),
    # Per-job counters, bumped in the same transaction as the row they number:
    # the UPDATE locks the job row, so numbering is serialised per job.
    sa.Column("event_seq", sa.Integer, nullable=False, default=0),
    sa.Column("trial_count", sa.Integer, nullable=False, default=0),
    # NULL keys are distinct on both backends, so jobs without a key never clash.
    sa.UniqueConstraint("owner", "idempotency_key"),
    sa.Index(None, "status", "pk"),
    sa.Index(None, "owner", "pk"),
    # The queue's per-user aggregates (queue_counts, every submit), from the index alone.
    sa.Index(None, "status", "owner", "created_at", "pk"),
    sa.Index(None, "owner", "started_at"),
)

trials = sa.Table(
    "regtune_trials", metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("regtune_jobs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("trial_id", sa.String(200), primary_key=True),
    sa.Column("trial_index", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("iteration", sa.Integer, nullable=False),
    sa.Column("objective", sa.Float, nullable=True),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("node", sa.String(200), nullable=True),
    sa.Column("gpu_ids", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("job_id", "trial_index"),
    sa.Index(None, "status"),
    # A job's counts by status, from the index alone (every job view reads them).
    sa.Index(None, "job_id", "status"),
)

events = sa.Table(
    "regtune_events", metadata,
    sa.Column("job_id", sa.String(32), sa.ForeignKey("regtune_jobs.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Queued jobs per owner, kept by the store in the transaction that changes a job's
# status (create_job, transition): a submit's queue position reads one row per user
# instead of counting the queue (queue_counts; bench B5). Every owner that ever
# submitted has a row (0 when nothing is queued).
queue_owners = sa.Table(
    "regtune_queue_owners", metadata,
    sa.Column("owner", sa.String(100), primary_key=True),
    sa.Column("queued", sa.Integer, nullable=False),
)

ALL_TABLES = (users, tokens, jobs, trials, events, queue_owners)


def is_regtune_table(name: str | None) -> bool:
    """True for tables this package owns (used to ignore MLflow's in a shared database)."""
    return bool(name) and name.startswith(TABLE_PREFIX)  # type: ignore[union-attr]


def include_object(obj: Any, name: str | None, type_: str, reflected: bool,
                   compare_to: Any) -> bool:
    """Alembic filter: autogenerate and compare_metadata look at regtune's tables only.

    Without it, a database shared with MLflow would show MLflow's tables as
    "removed" and an autogenerated migration would drop them.
    """
    if type_ == "table":
        return is_regtune_table(name) and name != VERSION_TABLE
    table = getattr(obj, "table", None)
    return table is None or is_regtune_table(table.name)
