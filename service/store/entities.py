"""The store's domain objects: plain frozen dataclasses.

Callers (the API, the launcher, the Ray driver) only ever see these, never
SQLAlchemy rows, so a store implementation can change its tables, or be
replaced, without touching them. They are frozen so a value read from the
store cannot be mutated by one caller and silently seen by another; to change
something, ask the store.

All timestamps are timezone-aware UTC ``datetime`` objects, whatever the
backend stores (SQLite has no time zones; PostgreSQL answers in the session's
zone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# --- job statuses --------------------------------------------------------------

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

JOB_STATUSES: tuple[str, ...] = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
#: A job in one of these never changes status again (transition() refuses to
#: move out of them unless the caller names them in ``from_statuses``).
TERMINAL: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE: frozenset[str] = frozenset({QUEUED, RUNNING})

# --- trial statuses --------------------------------------------------------------

TRIAL_PENDING = "pending"
TRIAL_RUNNING = "running"
TRIAL_COMPLETED = "completed"
TRIAL_STOPPED = "stopped"  # early-stopped by the scheduler (ASHA): not an error
TRIAL_FAILED = "failed"
TRIAL_CANCELLED = "cancelled"

TRIAL_STATUSES: tuple[str, ...] = (TRIAL_PENDING, TRIAL_RUNNING, TRIAL_COMPLETED,
                                   TRIAL_STOPPED, TRIAL_FAILED, TRIAL_CANCELLED)
TRIAL_TERMINAL: frozenset[str] = frozenset({TRIAL_COMPLETED, TRIAL_STOPPED, TRIAL_FAILED,
                                            TRIAL_CANCELLED})


def utcnow() -> datetime:
    """The one clock the store uses, aware and in UTC, so times compare across hosts."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class User:
    """A team member who can call the API. Tokens are not part of it: they are
    shown once, at creation, and only their hashes are kept."""

    id: int
    name: str
    admin: bool
    created_at: datetime
    revoked: bool = False


@dataclass(frozen=True)
class Job:
    """One hyperparameter search: a spec, who asked for it, and where it ran.

    ``spec`` is the validated search spec as a plain dict (what
    ``SearchSpec.model_dump(mode="json")`` gives), so the store does not depend
    on the spec model's version. ``num_trials`` is the number of trials asked
    for; ``best`` is the best trial so far as the tuner reports it.
    """

    id: str
    name: str
    owner: str
    status: str
    spec: dict[str, Any]
    created_at: datetime
    num_trials: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    ray_submission_id: str | None = None
    mlflow_experiment_id: str | None = None
    mlflow_parent_run_id: str | None = None
    error: str | None = None
    idempotency_key: str | None = None
    best: dict[str, Any] | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class Trial:
    """One trial of a job, as last reported by the Ray driver.

    ``index`` is the 0-based order in which the store first heard of the trial
    within its job; Ray's trial ids are opaque strings, and people want to say
    "trial 3". ``metrics`` and ``objective`` are the last report, not the best.
    """

    job_id: str
    trial_id: str
    index: int
    status: str
    created_at: datetime
    updated_at: datetime
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    objective: float | None = None
    mlflow_run_id: str | None = None
    node: str | None = None
    gpu_ids: list[Any] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TRIAL_TERMINAL


@dataclass(frozen=True)
class Event:
    """Something that happened to a job, for the event stream.

    ``seq`` starts at 1 and increases by exactly 1 per event of the job, and
    events become visible in ``seq`` order, so a client that polls with the
    last ``seq`` it saw never misses or repeats one.
    """

    job_id: str
    seq: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime
