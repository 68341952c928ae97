"""The job store contract: what the service needs from persistence, and no more.

Modelled on MLflow's ``AbstractStore`` / ``SqlAlchemyStore`` split: the API and
the Ray driver are written against :class:`JobStore`, and
:func:`service.store.open_store` picks the implementation from the URL. Keeping
the contract abstract keeps SQL out of the request handlers and lets tests
substitute a fake.

Concurrency is part of the contract, not an implementation detail, because the
API process and the Ray driver process write the same job at the same time:

* :meth:`JobStore.transition` is a compare-and-set, so "cancel" and "start"
  cannot both win;
* :meth:`JobStore.add_event` numbers events gap-free per job, and events become
  visible in that order, so pollers of :meth:`JobStore.events_since` miss nothing;
* :meth:`JobStore.create_job` with an idempotency key creates at most one job,
  even when the same request is retried concurrently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from service.store.entities import Event, Job, Trial, User


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class Conflict(StoreError):
    """The write would break a uniqueness rule (e.g. a user name already taken)."""


class NotFound(StoreError, KeyError):
    """The job, trial or user named does not exist.

    Also a ``KeyError``, so ``except KeyError`` in dict-minded callers works.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "not found"


#: Job fields :meth:`JobStore.update_job` and :meth:`JobStore.transition` accept.
#: ``status`` is deliberately absent from update_job: status changes go through
#: the compare-and-set in transition(). ``id``, ``owner``, ``created_at`` and
#: ``idempotency_key`` never change.
JOB_UPDATABLE: frozenset[str] = frozenset({
    "name", "spec", "num_trials", "started_at", "finished_at", "ray_submission_id",
    "mlflow_experiment_id", "mlflow_parent_run_id", "error", "best",
})

#: Trial fields :meth:`JobStore.upsert_trial` accepts.
TRIAL_FIELDS: frozenset[str] = frozenset({
    "status", "config", "metrics", "iteration", "objective", "mlflow_run_id", "node",
    "gpu_ids",
})


@dataclass(frozen=True)
class QueueCounts:
    """One queued job's place in its owner's queue, and the queue as per-user counts.

    ``nth`` is 1 for the owner's oldest queued job; ``backlog`` maps every user with
    queued jobs to how many, in the order of each user's oldest one; ``running`` holds
    objects with ``owner`` and ``started_at``; ``last_started`` is
    :meth:`JobStore.last_started_by_owner`.
    """

    owner: str
    nth: int
    backlog: dict[str, int]
    running: list[Any]
    last_started: dict[str, datetime]


class JobStore(ABC):
    """Users, jobs, trials and events of one regtune deployment."""

    #: True where the store writes one transaction at a time (SQLite): a caller with
    #: many concurrent writers may as well queue them before they reach the store.
    serial_writes: bool = False

    # --- users and tokens ------------------------------------------------------

    @abstractmethod
    def create_user(self, name: str, admin: bool = False) -> tuple[User, str]:
        """Create a user and a first token; the plaintext token is returned only here.

        Raises :class:`Conflict` if the name is taken, ``ValueError`` if it is empty.
        """

    @abstractmethod
    def issue_token(self, name: str) -> str:
        """Issue another token for ``name`` and return its plaintext.

        Issuing a token to a revoked user re-enables the user (with only the new
        token: revoked tokens stay revoked), so revoke + issue is a rotation.
        Raises :class:`NotFound` for an unknown user.
        """

    @abstractmethod
    def authenticate(self, token: str) -> User | None:
        """The user owning ``token``, or None if unknown, revoked, or the user is revoked."""

    @abstractmethod
    def list_users(self) -> list[User]:
        """All users, oldest first."""

    @abstractmethod
    def revoke_user(self, name: str) -> bool:
        """Revoke all of ``name``'s tokens; False if there is no such user."""

    # --- jobs -------------------------------------------------------------------

    @abstractmethod
    def create_job(self, *, name: str, owner: str, spec: dict[str, Any], num_trials: int,
                   idempotency_key: str | None = None,
                   first_event: tuple[str, dict[str, Any]] | None = None) -> tuple[Job, bool]:
        """Insert a queued job; returns ``(job, created)``.

        With an ``idempotency_key``, a second call by the same owner with the
        same key returns the first job and ``created=False`` (the spec of the
        retry is not compared: the key is the client's promise that it is the
        same request). ``first_event`` (kind, payload) is recorded as the new
        job's event 1 in the same transaction; nothing is recorded for a job
        that already existed.
        """

    @abstractmethod
    def get_job(self, job_id: str) -> Job | None:
        """The job, or None."""

    @abstractmethod
    def running_job_of(self, submission: str) -> Job | None:
        """The running job whose driver is the Ray job ``submission``, or None: what a
        standby driver waits for (``service.launcher.standby``)."""

    def job_and_trial_counts(self, job_id: str) -> tuple[Job | None, dict[str, int]]:
        """:meth:`get_job` and :meth:`count_trials_by_status` of that job, together:
        what a job view reads. Implementations answer from one read transaction."""
        from service.store.entities import TRIAL_STATUSES

        job = self.get_job(job_id)
        if job is None:
            return None, dict.fromkeys(TRIAL_STATUSES, 0)
        return job, self.count_trials_by_status(job_id)

    @abstractmethod
    def list_jobs(self, *, owner: str | None = None, status: str | Iterable[str] | None = None,
                  limit: int | None = 100, offset: int = 0) -> list[Job]:
        """Jobs newest first, optionally of one owner and of one status (or several).

        ``limit=None`` means no limit (e.g. all running jobs, for the scheduler).
        """

    @abstractmethod
    def update_job(self, job_id: str, **fields: Any) -> Job:
        """Set the given fields (see :data:`JOB_UPDATABLE`) and return the new job.

        Raises ``TypeError`` for a field that cannot be updated this way
        (including ``status``: use :meth:`transition`) and :class:`NotFound`
        for an unknown job.
        """

    @abstractmethod
    def transition(self, job_id: str, *, from_statuses: Iterable[str], to: str,
                   **fields: Any) -> bool:
        """Atomically move the job to ``to`` if its status is in ``from_statuses``.

        One conditional UPDATE: of two racing transitions out of the same
        status, exactly one returns True. Going to running sets ``started_at``,
        going to a terminal status sets ``finished_at``, going (back) to queued
        clears both, unless ``fields`` sets them. Other ``fields`` (as in
        :meth:`update_job`) are written in the same statement. Returns False if
        the job's status did not match or the job does not exist.
        """

    @abstractmethod
    def queued_jobs(self) -> list[Job]:
        """All queued jobs, oldest first: the scheduler's input."""

    @abstractmethod
    def count_jobs_by_status(self) -> dict[str, int]:
        """Number of jobs per status; every status is a key, zeros included."""

    def queue_snapshot(self) -> tuple[list[Any], list[Any], dict[str, datetime]]:
        """What the fair queue reads, and nothing more: ``(queued, running, last_started)``.

        ``queued`` oldest first and ``running`` are objects with ``id``, ``owner``,
        ``created_at`` and ``started_at`` (whole :class:`Job` objects here; an
        implementation may answer with lighter rows that skip the spec and the
        answer, since queue positions are computed on every queued job's view and
        every submit, and may give queued jobs any ``created_at`` that sorts them in
        the same order). ``last_started`` is :meth:`last_started_by_owner`.
        """
        from service.store.entities import RUNNING

        return (self.queued_jobs(), self.list_jobs(status=RUNNING, limit=None),
                self.last_started_by_owner())

    def queue_counts(self, job_id: str) -> QueueCounts | None:
        """What the fair queue needs to place one queued job, or None if it is not queued.

        Counts instead of jobs (:func:`service.scheduling.queue_position`), so that a
        submit's answer does not read the whole queue. This default derives them from
        :meth:`queue_snapshot`; implementations answer with aggregate queries.
        """
        queued, running, last_started = self.queue_snapshot()
        backlog: dict[str, int] = {}
        owner, nth = None, 0
        for job in sorted(queued, key=lambda j: j.created_at):
            backlog[job.owner] = backlog.get(job.owner, 0) + 1
            if job.id == job_id:
                owner, nth = job.owner, backlog[job.owner]
        if owner is None:
            return None
        return QueueCounts(owner, nth, backlog, list(running), last_started)

    def last_started_by_owner(self) -> dict[str, datetime]:
        """Each owner's latest ``started_at``, finished jobs included.

        The scheduler's memory of whom it served last (see
        :func:`service.scheduling.pick_jobs_to_start`). This default reads every
        job; implementations answer it with one aggregate query.
        """
        latest: dict[str, datetime] = {}
        for job in self.list_jobs(limit=None):
            if job.started_at is not None and (job.owner not in latest
                                               or job.started_at > latest[job.owner]):
                latest[job.owner] = job.started_at
        return latest

    # --- trials -------------------------------------------------------------------

    @abstractmethod
    def upsert_trial(self, job_id: str, trial_id: str, **fields: Any) -> Trial:
        """Create the trial (with the job's next index) or update the given fields.

        Fields not given keep their value. Raises :class:`NotFound` for an
        unknown job and ``TypeError`` for an unknown field.
        """

    def record(self, job_id: str, trials: Sequence[tuple[str, dict[str, Any]]] = (),
               events: Sequence[tuple[str, dict[str, Any]]] = (),
               best: dict[str, Any] | None = None) -> list[Trial]:
        """Several :meth:`upsert_trial` calls, then :meth:`add_event` calls in order, then
        the job's ``best``; returns the trials as stored.

        The driver records a result this way: a population's result is one upsert and
        one event per member. Implementations do it in one transaction (all or nothing,
        one commit); this default makes the calls one by one.
        """
        out = [self.upsert_trial(job_id, trial_id, **fields) for trial_id, fields in trials]
        for kind, payload in events:
            self.add_event(job_id, kind, payload)
        if best is not None:
            self.update_job(job_id, best=best)
        return out

    @abstractmethod
    def get_trial(self, job_id: str, trial_id: str) -> Trial | None:
        """The trial, or None."""

    @abstractmethod
    def list_trials(self, job_id: str) -> list[Trial]:
        """The job's trials by index."""

    @abstractmethod
    def count_trials_by_status(self, job_id: str | None = None) -> dict[str, int]:
        """Number of trials per status, of one job or of all; zeros included."""

    # --- events ---------------------------------------------------------------------

    @abstractmethod
    def add_event(self, job_id: str, kind: str, payload: dict[str, Any] | None = None) -> Event:
        """Append an event with the job's next ``seq``; raises :class:`NotFound`."""

    @abstractmethod
    def events_since(self, job_id: str, after_seq: int = 0, limit: int = 500) -> list[Event]:
        """Events of the job with ``seq > after_seq``, in seq order, at most ``limit``."""

    # --- lifecycle --------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Release connections. The store must not be used afterwards."""

    def __enter__(self) -> "JobStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
