"""The fair queue's reads, for :class:`~service.store.sql.SqlJobStore`.

A mixin: every submit asks for its job's place (:meth:`SqlQueue.queue_counts`)
and the launcher for a snapshot of the queue, so these read a few columns or
per-user counts, never every queued job's spec (bench B5 measures them). The
counts of queued jobs per owner are kept in ``regtune_queue_owners`` by
:func:`bump_queued`, in the transaction of every status change (``create_job``,
``transition``), so a submit reads one row per user instead of counting the queue.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from service.store import entities as e
from service.store import queries as q
from service.store.base import QueueCounts
from service.store.rows import findable, to_job
from service.store.schema import jobs

log = logging.getLogger(__name__)


class QueueEntry(NamedTuple):
    """A job as the fair queue sees it (see :meth:`SqlJobStore.queue_snapshot`).

    For a queued job ``created_at`` is its place in creation order (an int), for a
    running job its creation time."""

    id: str
    owner: str
    created_at: datetime | int
    started_at: datetime | None


class SqlQueue:
    """``queued_jobs``, ``queue_snapshot``, ``queue_counts`` and the per-status counts."""

    _read: Any

    def queued_jobs(self) -> list[e.Job]:
        query = sa.select(*jobs.c).where(jobs.c.status == e.QUEUED).order_by(jobs.c.pk)
        with self._read() as conn:
            return [to_job(r) for r in conn.execute(query)]

    def queue_snapshot(self) -> tuple[list[QueueEntry], list[QueueEntry], dict[str, datetime]]:
        # A few columns instead of whole jobs: decoding every queued job's spec made
        # each submit cost O(queue) JSON parsing (bench B5). Queued jobs come in the
        # order the fair queue sorts them (created_at, then insertion), and their
        # created_at is their place in that order (0, 1, ...), which is all the fair
        # queue uses it for, so no timestamp is decoded per queued job. One read
        # transaction, so the three answers are one consistent snapshot.
        queued_q = (sa.select(jobs.c.id, jobs.c.owner).where(jobs.c.status == e.QUEUED)
                    .order_by(jobs.c.created_at, jobs.c.pk))
        running_q = (sa.select(jobs.c.id, jobs.c.owner, jobs.c.created_at, jobs.c.started_at)
                     .where(jobs.c.status == e.RUNNING).order_by(jobs.c.pk.desc()))
        with self._read() as conn:
            queued = [QueueEntry(job_id, owner, i, None)
                      for i, (job_id, owner) in enumerate(conn.execute(queued_q))]
            running = [QueueEntry(*r) for r in conn.execute(running_q)]
            last = _last_started(conn)
        return queued, running, last

    def queue_counts(self, job_id: str) -> QueueCounts | None:
        # Counts instead of the queue's rows: a submit answers with its job's place.
        # Reading every queued job, then counting the queue's index entries, made that
        # O(queue) (1.42 ms of a submit's CPU at 2,000 queued jobs, bench B5); the store
        # now keeps queued jobs per owner (schema.queue_owners, kept_backlog) and reads
        # one row per user. The order is queue_snapshot's: created_at, pk.
        if not findable(job_id):
            return None
        log_drift = False
        with self._read() as conn:
            me = conn.execute(q.QUEUED_JOB, {"job_id": job_id}).first()
            if me is None:
                return None
            owner, created, pk = me
            rows = conn.execute(q.KEPT_BACKLOG).all()  # every owner that ever queued
            counts = {o: n for o, n, first, _ in rows if first is not None}
            oldest = {o: (first, first_pk) for o, _, first, first_pk in rows
                      if first is not None}
            # A count and its owner's oldest queued job agree on whether there is one.
            agree = all((n > 0) == (first is not None) for _, n, first, _ in rows)
            newest = tuple(conn.execute(q.NEWEST_OF_OWNER, {"owner": owner}).one())
            # The owner's newest (every submit's own job) is its counts[owner]-th.
            nth = counts.get(owner, 0) if newest == (created, pk) else conn.execute(
                q.NTH_OF_OWNER, {"owner": owner, "created": created, "pk": pk}).scalar_one()
            if not agree or not 1 <= nth <= counts.get(owner, 0):
                # The kept counts disagree with the jobs (edited by hand, or a writer
                # that does not keep them): answer from the jobs themselves.
                log_drift = True
                counts, oldest, nth = self._counted_backlog(conn, owner, created, pk)
            running = conn.execute(q.RUNNING).all()
            last = _last_started(conn)
        if log_drift:
            log.warning("the queue's kept per-owner counts disagree with the jobs; "
                        "answered from the jobs (see SqlQueue.queue_counts)")
        backlog = {o: counts[o] for o in sorted(counts, key=lambda o: oldest[o])}
        return QueueCounts(owner, nth, backlog, running, last)

    @staticmethod
    def _counted_backlog(conn: Any, owner: str, created: Any, pk: int
                         ) -> tuple[dict[str, int], dict[str, tuple[Any, int]], int]:
        """(queued jobs per owner, each owner's oldest, the job's nth) by counting jobs."""
        nth = conn.execute(q.NTH_OF_OWNER, {"owner": owner, "created": created,
                                           "pk": pk}).scalar_one()
        counted = conn.execute(q.BACKLOG).all()
        oldest = {o: (first, conn.execute(q.FIRST_PK, {"owner": o, "created": first})
                      .scalar_one()) for o, _, first in counted}
        return {o: n for o, n, _ in counted}, oldest, nth

    def count_jobs_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(e.JOB_STATUSES, 0)
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        with self._read() as conn:
            counts.update({status: n for status, n in conn.execute(query)})
        return counts

    def last_started_by_owner(self) -> dict[str, datetime]:
        with self._read() as conn:
            return _last_started(conn)


def _last_started(conn: Any) -> dict[str, datetime]:
    """Each owner's latest ``started_at``; owners none of whose jobs started are absent."""
    return {owner: started for owner, started in conn.execute(q.LAST_STARTED)
            if started is not None}


def bump_queued(conn: Any, owner: str, delta: int) -> None:
    """Add ``delta`` to ``owner``'s kept count of queued jobs, in the caller's transaction
    (the one that changes the job's status): an upsert, so a first job makes the row."""
    conn.execute(q.BUMP_QUEUED[conn.dialect.name], {"owner": owner, "delta": delta})
