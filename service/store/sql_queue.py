"""The fair queue's reads, for :class:`~service.store.sql.SqlJobStore`.

A mixin: every submit asks for its job's place (:meth:`SqlQueue.queue_counts`)
and the launcher for a snapshot of the queue, so these read a few columns or
per-user aggregates, never every queued job's spec (bench B5 measures them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from service.store import entities as e
from service.store import queries as q
from service.store.base import QueueCounts
from service.store.rows import findable, to_job
from service.store.schema import jobs


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
        last_q = (sa.select(jobs.c.owner, sa.func.max(jobs.c.started_at))
                  .where(jobs.c.started_at.is_not(None)).group_by(jobs.c.owner))
        with self._read() as conn:
            queued = [QueueEntry(job_id, owner, i, None)
                      for i, (job_id, owner) in enumerate(conn.execute(queued_q))]
            running = [QueueEntry(*r) for r in conn.execute(running_q)]
            last = {owner: started for owner, started in conn.execute(last_q)}
        return queued, running, last

    def queue_counts(self, job_id: str) -> QueueCounts | None:
        # Aggregates instead of the queue's rows: a submit answers with its job's place,
        # and reading every queued job made that O(queue) (bench B5: 4 of a submit's 7 ms
        # of CPU at 1,200 queued jobs). The order is queue_snapshot's: created_at, pk.
        if not findable(job_id):
            return None
        with self._read() as conn:
            me = conn.execute(q.QUEUED_JOB, {"job_id": job_id}).first()
            if me is None:
                return None
            owner, created, pk = me
            nth = conn.execute(q.NTH_OF_OWNER, {"owner": owner, "created": created,
                                               "pk": pk}).scalar_one()
            counts = conn.execute(q.BACKLOG).all()
            oldest = {o: (first, 0) for o, _, first in counts}
            firsts = [first for first, _ in oldest.values()]
            for o, (first, _) in oldest.items():
                if firsts.count(first) > 1:  # two users' oldest made in the same instant
                    oldest[o] = (first, conn.execute(q.FIRST_PK, {"owner": o, "created": first})
                                 .scalar_one())
            running = conn.execute(q.RUNNING).all()
            last = {o: started for o, started in conn.execute(q.LAST_STARTED)}
        backlog = {o: n for o, n, _ in sorted(counts, key=lambda row: oldest[row[0]])}
        return QueueCounts(owner, nth, backlog, running, last)

    def count_jobs_by_status(self) -> dict[str, int]:
        counts = dict.fromkeys(e.JOB_STATUSES, 0)
        query = sa.select(jobs.c.status, sa.func.count()).group_by(jobs.c.status)
        with self._read() as conn:
            counts.update({status: n for status, n in conn.execute(query)})
        return counts

    def last_started_by_owner(self) -> dict[str, datetime]:
        query = (sa.select(jobs.c.owner, sa.func.max(jobs.c.started_at))
                 .where(jobs.c.started_at.is_not(None)).group_by(jobs.c.owner))
        with self._read() as conn:
            return {owner: started for owner, started in conn.execute(query)}
