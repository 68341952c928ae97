"""Batched writes for :meth:`SqlJobStore.record`: a population's K members at once.

A population's result is K trial upserts and K events. Written row by row, each is
two statements built, compiled-cache-keyed and executed (an ``UPDATE ... RETURNING``
per trial, a sequence bump and an ``INSERT ... RETURNING`` per event): about 1 ms
of the driver's CPU per member per epoch, while every member of the population
waits for the driver (bench B2, end to end). Here the known trials are updated
with one ``executemany`` per set of columns, the events get their sequence
numbers from one bump and go in with one ``executemany``, and one ``SELECT``
returns the stored rows. The results are the same as the row-by-row path's; the
store tests run both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from service.store import queries as q
from service.store.entities import Trial
from service.store.rows import to_trial
from service.store.schema import jobs, trials

#: Below this many trials or events, row by row costs less than the extra SELECT.
BATCH_MIN = 4


def worth_batching(checked: Sequence[tuple[str, dict[str, Any]]]) -> bool:
    """Enough trials, and each once (a repeated id's writes must apply in order)."""
    ids = [trial_id for trial_id, _ in checked]
    return len(ids) >= BATCH_MIN and len(set(ids)) == len(ids)


def upsert_trials(conn: Connection, job_id: str,
                  checked: Sequence[tuple[str, dict[str, Any]]], now: datetime,
                  upsert_one: Callable[[Connection, str, str, dict[str, Any], datetime], Trial]
                  ) -> list[Trial]:
    """Every trial of ``checked``, stored, in its order: known ones updated in batches,
    new ones inserted by ``upsert_one`` (the row-by-row path, which numbers them)."""
    ids = [trial_id for trial_id, _ in checked]
    query = sa.select(trials.c.trial_id).where(trials.c.job_id == job_id,
                                               trials.c.trial_id.in_(ids))
    known = set(conn.execute(query).scalars())
    update_trials(conn, job_id, [c for c in checked if c[0] in known], now)
    for trial_id, values in checked:
        if trial_id not in known:
            upsert_one(conn, job_id, trial_id, values, now)
    rows = fetch_trials(conn, job_id, ids)
    return [to_trial(rows[trial_id]) for trial_id in ids]


def update_trials(conn: Connection, job_id: str,
                  checked: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> None:
    """UPDATE existing trials, one executemany per set of columns they set.

    The SET clause comes from the parameters' keys (SQLAlchemy's executemany form);
    rows setting different columns go in different groups.
    """
    if not checked:
        return
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for trial_id, values in checked:
        groups.setdefault(tuple(sorted(values)), []).append(
            {**values, "updated_at": now, q.B_JOB: job_id, q.B_TRIAL: trial_id})
    for rows in groups.values():
        conn.execute(q.UPDATE_TRIAL, rows)


def fetch_trials(conn: Connection, job_id: str, ids: Sequence[str]) -> dict[str, Row[Any]]:
    query = sa.select(*trials.c).where(trials.c.job_id == job_id, trials.c.trial_id.in_(ids))
    return {row.trial_id: row for row in conn.execute(query)}


def insert_events(conn: Connection, job_id: str,
                  items: Sequence[tuple[str, dict[str, Any]]], now: datetime) -> bool:
    """The events in order, with consecutive sequence numbers; False if no such job.

    Bumping the job's counter by len(items) locks its row until commit, as one bump
    per event does, so sequence numbers are still committed in order.
    """
    last = conn.execute(jobs.update().where(jobs.c.id == job_id)
                        .values(event_seq=jobs.c.event_seq + len(items))
                        .returning(jobs.c.event_seq)).scalar_one_or_none()
    if last is None:
        return False
    first = last - len(items) + 1
    conn.execute(q.INSERT_EVENT, [
        {"job_id": job_id, "seq": first + i, "kind": kind, "payload": body, "created_at": now}
        for i, (kind, body) in enumerate(items)])
    return True
