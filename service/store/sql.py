"""The SQLAlchemy job store: SQLite for one machine, PostgreSQL for a team.

Written with SQLAlchemy Core rather than the ORM: every method is one short
transaction of a few statements, and Core keeps the statements (and their
locking) visible, which matters because correctness under concurrent writers
rests on them:

* every write runs in a transaction that takes the write lock up front (SQLite
  ``BEGIN IMMEDIATE``, see :mod:`service.store.engine`);
* per-job numbering (event ``seq``, trial ``index``) comes from a counter on the
  job row, read and bumped in the same transaction as the insert. Bumping it
  locks the job row until commit, so numbers are handed out, and become
  visible, strictly in order, with no gaps and no retries;
* job status changes are a single conditional UPDATE (compare-and-set).

The schema is created and upgraded by Alembic when the store opens. Users and
tokens (:mod:`service.store.sql_users`) and the queue's reads
(:mod:`service.store.sql_queue`) are mixins in modules of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import IntegrityError

from service.store import entities as e
from service.store.base import JOB_UPDATABLE, TRIAL_FIELDS, JobStore, NotFound, StoreError
from service.store import batch
from service.store import queries as q
from service.store.engine import BEGIN_OPTION, make_engine
from service.store.fifo_lock import FifoLock
from service.store.migrate import upgrade_connection
from service.store.rows import (check_fields, check_name, check_strings, findable, new_job_id,
                                statuses, to_event, to_job, to_trial, trial_values)
from service.store.schema import events, jobs, trials
from service.store.sql_queue import SqlQueue, bump_queued
from service.store.sql_users import SqlUsers


def _check_event_kind(kind: Any) -> None:
    if not isinstance(kind, str) or not kind or len(kind) > 64:
        raise ValueError("event kind must be a non-empty string of at most 64 characters")
    check_strings(events, {"kind": kind})


class SqlJobStore(SqlUsers, SqlQueue, JobStore):
    """A :class:`JobStore` on any SQLAlchemy URL regtune supports (SQLite, PostgreSQL).

    Safe to share between threads; each process should open its own (engines do
    not survive ``fork``). ``migrate=False`` skips the upgrade on open, for
    tools that manage the schema themselves.
    """

    def __init__(self, url: str | URL, *, migrate: bool = True) -> None:
        self.url = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        self._engine = make_engine(self.url)
        self.serial_writes = self._engine.dialect.name == "sqlite"
        self._write_lock: Any = FifoLock() if self.serial_writes else nullcontext()
        if migrate:
            with self._engine.connect() as conn:
                upgrade_connection(conn)

    def __repr__(self) -> str:
        return f"SqlJobStore({make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> sa.Engine:
        """The engine, for tests and admin tools; application code uses the methods."""
        return self._engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        # SQLite has one writer at a time. Threads of this process queue on a lock and
        # are woken the moment it is free; left to SQLite's busy handler they would
        # sleep 1, 2, 5, 10, 15, 20, 25... ms between tries (bench B5: submits' p99 of
        # 200+ ms under 8 concurrent writers). The lock is FIFO: an RLock let some
        # writers overtake others (fifo_lock.py). Other processes meet busy_timeout.
        with self._write_lock, self._engine.connect() as conn:
            conn = conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        # One snapshot for all the statements of a read: PostgreSQL's default (READ
        # COMMITTED) lets each statement see newer commits, so a job picked between
        # queue_counts' statements looked queued to one and absent to the next (a 500
        # on GET /v1/jobs/{id}, seen in the deploy tests). SQLite's read transaction
        # is a snapshot already. Writes keep READ COMMITTED: no serialization failures.
        with self._engine.connect() as conn:
            if self._engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def close(self) -> None:
        self._engine.dispose()

    # --- jobs -----------------------------------------------------------------------------

    def _job_by_key(self, conn: Connection, owner: str, key: str) -> e.Job | None:
        row = conn.execute(q.JOB_BY_KEY, {"owner": owner, "key": key}).first()
        return to_job(row) if row is not None else None

    def create_job(self, *, name: str, owner: str, spec: dict[str, Any], num_trials: int,
                   idempotency_key: str | None = None,
                   first_event: tuple[str, dict[str, Any]] | None = None
                   ) -> tuple[e.Job, bool]:
        if not isinstance(name, str) or not name:
            raise ValueError("job name must be a non-empty string")
        check_name(owner, "owner")
        if not isinstance(spec, dict):
            raise ValueError("spec must be a dict")
        if int(num_trials) < 0:
            raise ValueError("num_trials must be >= 0")
        check_strings(jobs, {"name": name, "owner": owner, "idempotency_key": idempotency_key})
        if first_event is not None:
            kind, payload = first_event
            _check_event_kind(kind)
            body = dict(payload or {})
        last: IntegrityError | None = None
        for _attempt in range(3):
            try:
                with self._write() as conn:
                    if idempotency_key is not None:
                        existing = self._job_by_key(conn, owner, idempotency_key)
                        if existing is not None:
                            return existing, False
                    now = e.utcnow()
                    row = conn.execute(q.INSERT_JOB, dict(
                        id=new_job_id(), name=name, owner=owner, status=e.QUEUED, spec=spec,
                        num_trials=int(num_trials), created_at=now,
                        idempotency_key=idempotency_key,
                        event_seq=0 if first_event is None else 1, trial_count=0,
                    )).one()
                    if first_event is not None:
                        conn.execute(q.INSERT_EVENT, dict(
                            job_id=row.id, seq=1, kind=kind, payload=body, created_at=now))
                    bump_queued(conn, owner, 1)
                    return to_job(row), True
            except IntegrityError as exc:
                last = exc
                # Either a concurrent request with the same key won (PostgreSQL, where
                # the existence check does not lock), or the random id collided.
                if idempotency_key is not None:
                    with self._read() as conn:
                        existing = self._job_by_key(conn, owner, idempotency_key)
                    if existing is not None:
                        return existing, False
        raise StoreError("could not insert the job after 3 attempts") from last

    def get_job(self, job_id: str) -> e.Job | None:
        if not findable(job_id):
            return None
        with self._read() as conn:
            row = conn.execute(q.GET_JOB, {"job_id": job_id}).first()
        return to_job(row) if row is not None else None

    def running_job_of(self, submission: str) -> e.Job | None:
        if not findable(submission):
            return None
        # jobs(status, pk) narrows it to the running jobs, a handful.
        query = sa.select(*jobs.c).where(jobs.c.status == e.RUNNING,
                                         jobs.c.ray_submission_id == submission)
        with self._read() as conn:
            row = conn.execute(query).first()
        return to_job(row) if row is not None else None

    def job_and_trial_counts(self, job_id: str) -> tuple[e.Job | None, dict[str, int]]:
        counts = dict.fromkeys(e.TRIAL_STATUSES, 0)
        if not findable(job_id):
            return None, counts
        with self._read() as conn:  # one snapshot, one connection checkout
            row = conn.execute(q.GET_JOB, {"job_id": job_id}).first()
            if row is None:
                return None, counts
            counts.update({status: n for status, n in
                           conn.execute(q.TRIALS_BY_STATUS, {"job_id": job_id})})
        return to_job(row), counts

    def list_jobs(self, *, owner: str | None = None, status: str | Iterable[str] | None = None,
                  limit: int | None = 100, offset: int = 0) -> list[e.Job]:
        if (limit is not None and limit < 0) or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        query = sa.select(*jobs.c).order_by(jobs.c.pk.desc()).offset(offset).limit(limit)
        if owner is not None:
            if not findable(owner):
                return []
            query = query.where(jobs.c.owner == owner)
        if status is not None:
            query = query.where(jobs.c.status.in_(statuses(status, e.JOB_STATUSES)))
        with self._read() as conn:
            return [to_job(r) for r in conn.execute(query)]

    def update_job(self, job_id: str, **fields: Any) -> e.Job:
        check_fields(fields, JOB_UPDATABLE, " with update_job (status: use transition())")
        check_strings(jobs, fields)
        if not findable(job_id):
            raise NotFound(f"no job {job_id!r}")
        with self._write() as conn:
            if fields:
                row = conn.execute(q.UPDATE_JOB_RETURNING, {**fields, q.B_JOB: job_id}).first()
            else:
                row = conn.execute(sa.select(*jobs.c).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return to_job(row)

    def transition(self, job_id: str, *, from_statuses: Iterable[str], to: str,
                   **fields: Any) -> bool:
        sources = statuses(from_statuses, e.JOB_STATUSES)
        statuses(to, e.JOB_STATUSES)
        check_fields(fields, JOB_UPDATABLE)
        check_strings(jobs, fields)
        now, values = e.utcnow(), dict(fields, status=to)
        if to == e.RUNNING:
            values.setdefault("started_at", now)
        elif to in e.TERMINAL:
            values.setdefault("finished_at", now)
        elif to == e.QUEUED:
            values.setdefault("started_at", None)
            values.setdefault("finished_at", None)
        if not sources or not findable(job_id):
            return False
        # A job entering or leaving the queue changes its owner's kept count of queued
        # jobs (queue_counts). With the queue among several sources, the job's status
        # decides which, so the queue is tried alone first: each UPDATE is still a
        # compare-and-set, and a concurrent change makes the first match nothing.
        groups = [sources] if e.QUEUED not in sources or len(sources) == 1 else \
            [{e.QUEUED}, sources - {e.QUEUED}]
        with self._write() as conn:
            for group in groups:
                owner = conn.execute(jobs.update()
                                     .where(jobs.c.id == job_id, jobs.c.status.in_(group))
                                     .values(**values).returning(jobs.c.owner)).scalar()
                if owner is not None:
                    delta = int(to == e.QUEUED) - int(e.QUEUED in group)
                    if delta:
                        bump_queued(conn, owner, delta)
                    return True
            return False

    # --- trials ---------------------------------------------------------------------------

    def upsert_trial(self, job_id: str, trial_id: str, **fields: Any) -> e.Trial:
        values = self._trial_write(job_id, trial_id, fields)
        with self._write() as conn:
            return self._upsert_in(conn, job_id, trial_id, values, e.utcnow())

    def record(self, job_id: str, trials: Sequence[tuple[str, dict[str, Any]]] = (),
               events: Sequence[tuple[str, dict[str, Any]]] = (),
               best: dict[str, Any] | None = None) -> list[e.Trial]:
        # One transaction, one commit: a population's result is K members' upserts and
        # events, which as separate transactions cost the driver 170 ms per result at
        # K = 64 (bench B2, end to end). Everything is checked before anything is written.
        checked = [(trial_id, self._trial_write(job_id, trial_id, fields))
                   for trial_id, fields in trials]
        for kind, _ in events:
            _check_event_kind(kind)
        if not findable(job_id):
            raise NotFound(f"no job {job_id!r}")
        now = e.utcnow()
        with self._write() as conn:
            if batch.worth_batching(checked):  # a population: a few statements for all K
                out = batch.upsert_trials(conn, job_id, checked, now, self._upsert_in)
            else:
                out = [self._upsert_in(conn, job_id, trial_id, values, now)
                       for trial_id, values in checked]
            items = [(kind, dict(payload or {})) for kind, payload in events]
            if len(items) < batch.BATCH_MIN:
                for kind, body in items:
                    self._event_in(conn, job_id, kind, body, now)
            elif not batch.insert_events(conn, job_id, items, now):
                raise NotFound(f"no job {job_id!r}")
            if best is not None:
                conn.execute(q.UPDATE_JOB, {"best": best, q.B_JOB: job_id})
        return out

    @staticmethod
    def _trial_write(job_id: str, trial_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        check_fields(fields, TRIAL_FIELDS)
        values = trial_values(fields)
        check_strings(trials, {**values, "trial_id": trial_id})
        if not findable(job_id):
            raise NotFound(f"no job {job_id!r}")
        return values

    @staticmethod
    def _upsert_in(conn: Connection, job_id: str, trial_id: str, values: dict[str, Any],
                   now: datetime) -> e.Trial:
        update = {**values, "updated_at": now, q.B_JOB: job_id, q.B_TRIAL: trial_id}
        # The hot path (a report for a known trial) touches only the trial row,
        # so metric reports never wait on the job row that cancels update.
        row = conn.execute(q.UPDATE_TRIAL_RETURNING, update).first()
        if row is not None:
            return to_trial(row)
        # New trial: lock the job row, so concurrent inserts get distinct indexes.
        index = conn.execute(sa.select(jobs.c.trial_count).where(jobs.c.id == job_id)
                             .with_for_update()).scalar_one_or_none()
        if index is None:
            raise NotFound(f"no job {job_id!r}")
        row = conn.execute(q.UPDATE_TRIAL_RETURNING, update).first()
        if row is not None:  # inserted by someone else while we waited for the lock
            return to_trial(row)
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(trial_count=index + 1))
        defaults: dict[str, Any] = {"status": e.TRIAL_PENDING, "config": {}, "metrics": {},
                                    "iteration": 0, "gpu_ids": []}
        row = conn.execute(trials.insert().values(
            **{**defaults, **values}, job_id=job_id, trial_id=trial_id, trial_index=index,
            created_at=now, updated_at=now).returning(*trials.c)).one()
        return to_trial(row)

    def get_trial(self, job_id: str, trial_id: str) -> e.Trial | None:
        if not findable(job_id, trial_id):
            return None
        query = sa.select(*trials.c).where(trials.c.job_id == job_id,
                                           trials.c.trial_id == trial_id)
        with self._read() as conn:
            row = conn.execute(query).first()
        return to_trial(row) if row is not None else None

    def list_trials(self, job_id: str) -> list[e.Trial]:
        if not findable(job_id):
            return []
        query = (sa.select(*trials.c).where(trials.c.job_id == job_id)
                 .order_by(trials.c.trial_index))
        with self._read() as conn:
            return [to_trial(r) for r in conn.execute(query)]

    def count_trials_by_status(self, job_id: str | None = None) -> dict[str, int]:
        counts = dict.fromkeys(e.TRIAL_STATUSES, 0)
        if job_id is not None:
            if not findable(job_id):
                return counts
            with self._read() as conn:
                counts.update({status: n for status, n in
                               conn.execute(q.TRIALS_BY_STATUS, {"job_id": job_id})})
            return counts
        query = sa.select(trials.c.status, sa.func.count()).group_by(trials.c.status)
        with self._read() as conn:
            counts.update({status: n for status, n in conn.execute(query)})
        return counts

    # --- events -----------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: str,
                  payload: dict[str, Any] | None = None) -> e.Event:
        _check_event_kind(kind)
        if not findable(job_id):
            raise NotFound(f"no job {job_id!r}")
        with self._write() as conn:
            row = self._event_in(conn, job_id, kind, dict(payload or {}), e.utcnow())
        return to_event(row)

    @staticmethod
    def _event_in(conn: Connection, job_id: str, kind: str, body: dict[str, Any],
                  now: datetime) -> Any:
        # Bumping the counter locks the job row until commit: the next writer's
        # bump waits, so seqs are committed (and seen by pollers) in order.
        seq = conn.execute(q.NEXT_EVENT_SEQ, {q.B_JOB: job_id}).scalar_one_or_none()
        if seq is None:
            raise NotFound(f"no job {job_id!r}")
        return conn.execute(q.INSERT_EVENT_RETURNING, dict(
            job_id=job_id, seq=seq, kind=kind, payload=body, created_at=now)).one()

    def events_since(self, job_id: str, after_seq: int = 0, limit: int = 500) -> list[e.Event]:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if not findable(job_id):
            return []
        query = (sa.select(*events.c).where(events.c.job_id == job_id, events.c.seq > after_seq)
                 .order_by(events.c.seq).limit(limit))
        with self._read() as conn:
            return [to_event(r) for r in conn.execute(query)]
