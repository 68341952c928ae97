"""Statements of the SQL store's hot paths, built once at import.

Building a select of every column costs more than running it on SQLite, so the
reads made on every job view and every submit are compiled-cached here and bound
with parameters by :class:`~service.store.sql.SqlJobStore`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from service.store import entities as e
from service.store.schema import events, jobs, queue_owners, trials

# Every job view.
GET_JOB = sa.select(*jobs.c).where(jobs.c.id == sa.bindparam("job_id"))
TRIALS_BY_STATUS = (sa.select(trials.c.status, sa.func.count())
                    .where(trials.c.job_id == sa.bindparam("job_id"))
                    .group_by(trials.c.status))

# A queued job's place (queue_counts, every submit): per-user counts, not the queue's rows.
QUEUED = jobs.c.status == e.QUEUED
QUEUED_JOB = sa.select(jobs.c.owner, jobs.c.created_at, jobs.c.pk).where(
    jobs.c.id == sa.bindparam("job_id"), QUEUED)
NTH_OF_OWNER = sa.select(sa.func.count()).select_from(jobs).where(
    QUEUED, jobs.c.owner == sa.bindparam("owner"),
    sa.or_(jobs.c.created_at < sa.bindparam("created"),
           sa.and_(jobs.c.created_at == sa.bindparam("created"),
                   jobs.c.pk <= sa.bindparam("pk"))))
BACKLOG = (sa.select(jobs.c.owner, sa.func.count(), sa.func.min(jobs.c.created_at))
           .where(QUEUED).group_by(jobs.c.owner))
FIRST_PK = sa.select(sa.func.min(jobs.c.pk)).where(
    QUEUED, jobs.c.owner == sa.bindparam("owner"),
    jobs.c.created_at == sa.bindparam("created"))
RUNNING = sa.select(jobs.c.owner, jobs.c.started_at).where(jobs.c.status == e.RUNNING)



def _oldest_queued(column: sa.Column) -> sa.ScalarSelect:
    """``column`` of the kept owner's oldest queued job, by an index seek."""
    return (sa.select(column).where(QUEUED, jobs.c.owner == queue_owners.c.owner)
            .order_by(jobs.c.created_at, jobs.c.pk).limit(1).scalar_subquery())


# The per-owner counts the store keeps (schema.queue_owners: a row for every owner that
# ever submitted, 0 when none is queued), each with its owner's oldest queued job:
# one statement, O(users), not O(queue).
KEPT_BACKLOG = sa.select(queue_owners.c.owner, queue_owners.c.queued,
                         _oldest_queued(jobs.c.created_at), _oldest_queued(jobs.c.pk))
NEWEST_OF_OWNER = (sa.select(jobs.c.created_at, jobs.c.pk)
                   .where(QUEUED, jobs.c.owner == sa.bindparam("owner"))
                   .order_by(jobs.c.created_at.desc(), jobs.c.pk.desc()).limit(1))

# Each owner's latest start, by an index seek per owner (jobs' (owner, started_at)
# index) over the kept owners, every one that ever submitted: a GROUP BY read every
# job ever started, 5.0 ms per call at 20,000 finished jobs against 0.12 ms so.
# None for an owner whose jobs never started (left out by the callers).
LAST_STARTED = sa.select(queue_owners.c.owner, sa.select(sa.func.max(jobs.c.started_at)).where(
    jobs.c.owner == queue_owners.c.owner).scalar_subquery())


# A submit with an Idempotency-Key looks for the job that key already made.
JOB_BY_KEY = sa.select(*jobs.c).where(jobs.c.owner == sa.bindparam("owner"),
                                      jobs.c.idempotency_key == sa.bindparam("key"))

# Every submit's writes (create_job), parameters bound at execution: building them with
# ``.values(...)`` per call cost more CPU than SQLite's work on them (bench B5).
INSERT_JOB = jobs.insert().returning(*jobs.c)
INSERT_EVENT = events.insert()


def _bump_queued(insert: type) -> sa.Insert:
    """Add :delta to :owner's kept count of queued jobs (an upsert: a first job makes the row)."""
    return insert(queue_owners).values(owner=sa.bindparam("owner"),
                                       queued=sa.bindparam("delta")).on_conflict_do_update(
        index_elements=[queue_owners.c.owner],
        set_={"queued": queue_owners.c.queued + sa.bindparam("delta")})


BUMP_QUEUED = {"postgresql": _bump_queued(postgresql.insert), "sqlite": _bump_queued(sqlite.insert)}

# Every result of every trial (SqlJobStore.record, in the driver's loop while the trial
# waits), and update_job: the SET clause comes from the parameters' keys, the row from
# these bound names (not column names, which SQLAlchemy would take for SET columns).
B_JOB, B_TRIAL = "b_job_id", "b_trial_id"
TRIAL_ROW = (trials.c.job_id == sa.bindparam(B_JOB), trials.c.trial_id == sa.bindparam(B_TRIAL))
UPDATE_TRIAL = trials.update().where(*TRIAL_ROW)
UPDATE_TRIAL_RETURNING = UPDATE_TRIAL.returning(*trials.c)
NEXT_EVENT_SEQ = (jobs.update().where(jobs.c.id == sa.bindparam(B_JOB))
                  .values(event_seq=jobs.c.event_seq + 1).returning(jobs.c.event_seq))
INSERT_EVENT_RETURNING = events.insert().returning(*events.c)
UPDATE_JOB = jobs.update().where(jobs.c.id == sa.bindparam(B_JOB))
UPDATE_JOB_RETURNING = UPDATE_JOB.returning(*jobs.c)
