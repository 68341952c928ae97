"""The fair queue's reads on both backends: snapshots, per-user counts, last starts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from tests.service.store.test_store_api import make_job


class TestQueue:
    def test_queue_snapshot_matches_the_full_jobs(self, store):
        a = make_job(store, owner="alice")
        b = make_job(store, owner="bob")
        c = make_job(store, owner="alice")
        assert store.transition(b.id, from_statuses={"queued"}, to="running")
        queued, running, last = store.queue_snapshot()
        assert [(q.id, q.owner) for q in queued] == \
            [(j.id, j.owner) for j in store.queued_jobs()]
        assert [q.id for q in queued] == [a.id, c.id]
        assert sorted(queued, key=lambda q: q.created_at) == queued  # sorts as it came
        assert [(r.id, r.started_at) for r in running] == \
            [(b.id, store.get_job(b.id).started_at)]
        assert last == store.last_started_by_owner()

    def test_queue_counts_match_the_queue(self, store):
        """The aggregate answer equals the one derived from the whole queue, ties included."""
        from service.store.base import JobStore
        from service.store.schema import jobs

        made = [make_job(store, owner=o) for o in ("alice", "bob", "carol", "alice", "bob",
                                                   "carol", "alice")]
        assert store.transition(made[4].id, from_statuses={"queued"}, to="running")
        # carol's and bob's oldest queued jobs made in the same instant, before alice's:
        # the older row (bob's) goes first, as in queue_snapshot.
        same = made[0].created_at - timedelta(seconds=5)
        with store.engine.begin() as conn:
            for j in (made[1], made[2]):
                conn.execute(jobs.update().where(jobs.c.id == j.id).values(created_at=same))
        for j in made:
            got = store.queue_counts(j.id)
            if j is made[4]:
                assert got is None
                continue
            ref = JobStore.queue_counts(store, j.id)
            assert (got.owner, got.nth, got.backlog, got.last_started) == \
                (ref.owner, ref.nth, ref.backlog, ref.last_started)
            assert [(r.owner, r.started_at) for r in got.running] == \
                [(r.owner, r.started_at) for r in ref.running]
        assert list(store.queue_counts(made[0].id).backlog.items()) == \
            [("bob", 1), ("carol", 2), ("alice", 3)]
        assert store.queue_counts(made[6].id).nth == 3
        assert store.queue_counts("0123456789ab") is None
        assert store.queue_counts("x\x00") is None

    def test_queue_counts_is_one_snapshot_while_the_job_is_picked(self, store):
        """The supervisor starts the job between queue_counts' first statement and the
        rest: the answer is the queue as it was (PostgreSQL's default isolation gave
        nth 0 and a 500 on GET /v1/jobs/{id})."""
        from service.store.queries import QUEUED_JOB

        mine, other = make_job(store, owner="alice"), make_job(store, owner="bob")
        picked: list[bool] = []

        def pick_now(conn, cursor, statement, parameters, context, executemany):
            if not picked and context.compiled is not None \
                    and context.compiled.statement is QUEUED_JOB:
                picked.append(store.transition(mine.id, from_statuses={"queued"},
                                               to="running"))

        sa.event.listen(store.engine, "after_cursor_execute", pick_now)
        try:
            counts = store.queue_counts(mine.id)
        finally:
            sa.event.remove(store.engine, "after_cursor_execute", pick_now)
        assert picked == [True] and store.get_job(mine.id).status == "running"
        assert counts.nth == 1 and counts.backlog == {"alice": 1, "bob": 1}
        assert store.queue_counts(mine.id) is None  # and now it is out of the queue
        assert store.queue_counts(other.id).backlog == {"bob": 1}

    def test_queued_jobs_oldest_first(self, store):
        jobs = [make_job(store, owner=o) for o in ("alice", "bob", "alice", "carol")]
        store.transition(jobs[1].id, from_statuses={"queued"}, to="running")
        assert [j.id for j in store.queued_jobs()] == [jobs[0].id, jobs[2].id, jobs[3].id]

    def test_last_started_by_owner(self, store):
        assert store.last_started_by_owner() == {}
        a1, a2, b1 = make_job(store, owner="alice"), make_job(store, owner="alice"), \
            make_job(store, owner="bob")
        make_job(store, owner="carol")  # never started: absent
        t1, t2, t3 = (datetime(2025, 1, d, tzinfo=timezone.utc) for d in (1, 2, 3))
        store.transition(a2.id, from_statuses={"queued"}, to="running", started_at=t2)
        store.transition(a2.id, from_statuses={"running"}, to="succeeded")  # finished counts
        store.transition(a1.id, from_statuses={"queued"}, to="running", started_at=t1)
        store.transition(b1.id, from_statuses={"queued"}, to="running", started_at=t3)
        assert store.last_started_by_owner() == {"alice": t2, "bob": t3}


    def test_the_kept_per_owner_counts_follow_every_status_change(self, store):
        """queue_counts reads queued jobs per owner kept by create_job and transition;
        after each change they equal the counted queue, whichever source a job left."""
        from service.store.schema import queue_owners

        def kept() -> dict[str, int]:
            with store.engine.connect() as conn:
                return {o: n for o, n in conn.execute(sa.select(queue_owners)) if n}

        def counted() -> dict[str, int]:
            out: dict[str, int] = {}
            for j in store.queued_jobs():
                out[j.owner] = out.get(j.owner, 0) + 1
            return out

        a1, a2, b1 = (make_job(store, owner=o) for o in ("alice", "alice", "bob"))
        assert kept() == counted() == {"alice": 2, "bob": 1}
        steps = [
            (a1.id, {"queued"}, "running", True),             # leaves the queue
            (a1.id, {"running"}, "queued", True),             # back (a failed launch)
            (a1.id, {"queued", "running"}, "cancelled", True),  # from the queue
            (b1.id, {"queued"}, "running", True),
            (b1.id, {"queued", "running"}, "cancelled", True),  # from running: no change
            (a2.id, {"running"}, "succeeded", False),          # not running: nothing
            (a2.id, {"queued", "running"}, "queued", True),    # queued to queued
        ]
        for job_id, sources, to, changed in steps:
            assert store.transition(job_id, from_statuses=sources, to=to) is changed
            assert store.get_job(job_id).status == (to if changed else "queued")
            assert kept() == counted(), (job_id, sources, to)
        assert kept() == {"alice": 1}

    def test_counts_that_disagree_with_the_jobs_are_not_trusted(self, store, caplog):
        """A count that says an owner has no queued jobs while it has some, or some while
        it has none (edited by hand): the answer comes from the jobs, as before the counts
        were kept, and says so in the log. (A count that is merely too high is trusted:
        finding that out would take the count the table exists to avoid.)"""
        from service.store.base import JobStore
        from service.store.schema import queue_owners

        made = [make_job(store, owner=o) for o in ("alice", "bob", "alice")]
        for wrong in ({"alice": 0}, {"alice": 2, "zed": 3}):
            with store.engine.begin() as conn:
                for owner, n in wrong.items():
                    if conn.execute(queue_owners.update().where(queue_owners.c.owner == owner)
                                    .values(queued=n)).rowcount == 0:
                        conn.execute(queue_owners.insert().values(owner=owner, queued=n))
            for j in made:
                got, ref = store.queue_counts(j.id), JobStore.queue_counts(store, j.id)
                assert (got.nth, got.backlog) == (ref.nth, ref.backlog), wrong
        assert "disagree with the jobs" in caplog.text
