"""The JobStore contract, run against every backend (see conftest ``store``)."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from service.auth import hash_token
from service.store import (JOB_STATUSES, TRIAL_STATUSES, Conflict, NotFound, StoreError)
from service.store.schema import ALL_TABLES
from service.store.sql import SqlJobStore

SPEC = {"version": 1, "name": "demo", "task": "moons", "space": {"l2": {"low": 1e-5, "high": 1.0,
                                                                       "log": True}}}


def make_job(store: SqlJobStore, name: str = "demo", owner: str = "alice", **kw):
    job, created = store.create_job(name=name, owner=owner, spec=SPEC,
                                    num_trials=kw.pop("num_trials", 4), **kw)
    assert created
    return job


def dump_database(store: SqlJobStore) -> str:
    """Every row of every regtune table, as text."""
    with store.engine.connect() as conn:
        return "\n".join(repr(list(conn.execute(sa.select(t)))) for t in ALL_TABLES)


class TestUsers:
    def test_created_user_authenticates_with_returned_token(self, store):
        user, token = store.create_user("alice", admin=True)
        assert (user.name, user.admin, user.revoked) == ("alice", True, False)
        assert user.created_at.tzinfo is not None
        assert store.authenticate(token) == user
        assert len(token) >= 43  # 32 random bytes, url-safe base64

    def test_duplicate_name_conflicts(self, store):
        store.create_user("bob")
        with pytest.raises(Conflict):
            store.create_user("bob", admin=True)
        assert [u.name for u in store.list_users()] == ["bob"]

    @pytest.mark.parametrize("name", ["", "   ", "x" * 101])
    def test_bad_name_rejected(self, store, name):
        with pytest.raises(ValueError):
            store.create_user(name)

    def test_tokens_hashed_at_rest(self, store):
        _, first = store.create_user("alice")
        second = store.issue_token("alice")
        text = dump_database(store)
        for token in (first, second):
            assert token not in text
            assert token[10:30] not in text  # not even a stretch of it beyond the prefix
            assert hash_token(token) in text

    def test_unknown_or_malformed_token(self, store):
        store.create_user("alice")
        assert store.authenticate("not-a-token") is None
        assert store.authenticate("") is None
        assert store.authenticate(None) is None  # type: ignore[arg-type]

    def test_revoke_user_disables_all_tokens(self, store):
        _, first = store.create_user("alice")
        second = store.issue_token("alice")
        _, other = store.create_user("bob")
        assert store.revoke_user("alice") is True
        assert store.authenticate(first) is None
        assert store.authenticate(second) is None
        assert store.authenticate(other).name == "bob"
        assert {u.name: u.revoked for u in store.list_users()} == {"alice": True, "bob": False}
        assert store.revoke_user("nobody") is False

    def test_issue_token_after_revoke_rotates(self, store):
        _, old = store.create_user("alice")
        store.revoke_user("alice")
        new = store.issue_token("alice")
        assert store.authenticate(new).name == "alice"
        assert store.authenticate(old) is None

    def test_issue_token_for_unknown_user(self, store):
        with pytest.raises(NotFound):
            store.issue_token("ghost")
        with pytest.raises(KeyError):  # NotFound is also a KeyError
            store.issue_token("ghost")

    def test_list_users_in_creation_order(self, store):
        for name in ("carol", "alice", "bob"):
            store.create_user(name, admin=name == "alice")
        users = store.list_users()
        assert [u.name for u in users] == ["carol", "alice", "bob"]
        assert [u.admin for u in users] == [False, True, False]


class TestJobs:
    def test_create_job(self, store):
        before = datetime.now(timezone.utc)
        job = make_job(store, num_trials=7)
        assert re.fullmatch(r"[0-9a-f]{12}", job.id)
        assert (job.status, job.owner, job.name, job.num_trials) == ("queued", "alice", "demo", 7)
        assert job.spec == SPEC
        assert before - timedelta(seconds=1) <= job.created_at <= datetime.now(timezone.utc)
        assert job.started_at is job.finished_at is job.best is job.error is None
        assert store.get_job(job.id) == job

    def test_get_unknown_job(self, store):
        assert store.get_job("0123456789ab") is None

    def test_idempotency_key(self, store):
        first, created = store.create_job(name="a", owner="alice", spec=SPEC, num_trials=1,
                                          idempotency_key="req-1")
        again, created_again = store.create_job(name="b", owner="alice", spec={}, num_trials=9,
                                                idempotency_key="req-1")
        assert created and not created_again
        assert again == first
        other, created_other = store.create_job(name="a", owner="bob", spec=SPEC, num_trials=1,
                                                idempotency_key="req-1")
        assert created_other and other.id != first.id  # keys are per owner
        make_job(store)
        make_job(store)  # no key: never deduplicated
        assert len(store.list_jobs()) == 4

    def test_first_event_is_written_with_the_job_and_only_once(self, store):
        job, created = store.create_job(name="a", owner="alice", spec=SPEC, num_trials=1,
                                        idempotency_key="k",
                                        first_event=("job_queued", {"owner": "alice"}))
        assert created
        again, created_again = store.create_job(name="a", owner="alice", spec=SPEC,
                                                num_trials=1, idempotency_key="k",
                                                first_event=("job_queued", {"owner": "alice"}))
        assert not created_again and again.id == job.id
        events = store.events_since(job.id)
        assert [(ev.seq, ev.kind, ev.payload) for ev in events] == \
            [(1, "job_queued", {"owner": "alice"})]
        assert store.add_event(job.id, "next").seq == 2  # numbering goes on after it
        with pytest.raises(ValueError):
            store.create_job(name="a", owner="alice", spec=SPEC, num_trials=1,
                             first_event=("", {}))

    def test_job_and_trial_counts(self, store):
        job = make_job(store)
        store.upsert_trial(job.id, "t1", status="running")
        store.upsert_trial(job.id, "t2", status="completed")
        store.upsert_trial(job.id, "t3", status="completed")
        other = make_job(store)
        store.upsert_trial(other.id, "t1", status="failed")
        got, counts = store.job_and_trial_counts(job.id)
        assert got == store.get_job(job.id)
        assert counts == store.count_trials_by_status(job.id)
        assert counts["completed"] == 2 and counts["running"] == 1 and counts["failed"] == 0
        assert store.job_and_trial_counts("0123456789ab") == (
            None, dict.fromkeys(("pending", "running", "completed", "stopped", "failed",
                                 "cancelled"), 0))
        assert store.job_and_trial_counts("x\x00")[0] is None

    def test_list_jobs_newest_first_and_filters(self, store):
        a1 = make_job(store, owner="alice")
        b1 = make_job(store, owner="bob")
        a2 = make_job(store, owner="alice")
        assert store.transition(b1.id, from_statuses={"queued"}, to="running")
        assert [j.id for j in store.list_jobs()] == [a2.id, b1.id, a1.id]
        assert [j.id for j in store.list_jobs(owner="alice")] == [a2.id, a1.id]
        assert [j.id for j in store.list_jobs(status="running")] == [b1.id]
        assert [j.id for j in store.list_jobs(status={"queued", "running"}, owner="bob")] \
            == [b1.id]
        assert [j.id for j in store.list_jobs(limit=1, offset=1)] == [b1.id]
        assert [j.id for j in store.list_jobs(limit=None, offset=2)] == [a1.id]
        assert store.list_jobs(owner="nobody") == []
        with pytest.raises(ValueError):
            store.list_jobs(status="exploded")

    def test_update_job(self, store):
        job = make_job(store)
        best = {"trial_id": "t1", "metric": 0.9, "config": {"l2": 0.01}}
        updated = store.update_job(job.id, ray_submission_id="regtune-x", best=best,
                                   mlflow_experiment_id="3", mlflow_parent_run_id="abc")
        assert (updated.ray_submission_id, updated.best, updated.mlflow_experiment_id,
                updated.mlflow_parent_run_id) == ("regtune-x", best, "3", "abc")
        assert store.get_job(job.id) == updated
        assert updated.status == "queued" and updated.created_at == job.created_at
        assert store.update_job(job.id) == updated
        assert store.update_job(job.id, best=None).best is None

    def test_update_job_rejects_unknown_fields_and_jobs(self, store):
        job = make_job(store)
        with pytest.raises(TypeError, match="status"):
            store.update_job(job.id, status="running")
        with pytest.raises(TypeError, match="colour"):
            store.update_job(job.id, colour="red")
        with pytest.raises(NotFound):
            store.update_job("000000000000", error="x")
        with pytest.raises(ValueError, match="aware"):
            store.update_job(job.id, started_at=datetime(2025, 1, 1))
        assert store.get_job(job.id) == job

    def test_transition_is_compare_and_set(self, store):
        job = make_job(store)
        assert store.transition(job.id, from_statuses={"running"}, to="succeeded") is False
        assert store.get_job(job.id) == job
        assert store.transition(job.id, from_statuses={"queued"}, to="running",
                                ray_submission_id="sub-1") is True
        running = store.get_job(job.id)
        assert running.status == "running" and running.ray_submission_id == "sub-1"
        assert running.started_at is not None and running.finished_at is None
        assert store.transition(job.id, from_statuses={"queued"}, to="cancelled") is False
        assert store.transition(job.id, from_statuses={"queued", "running"}, to="failed",
                                error="boom") is True
        failed = store.get_job(job.id)
        assert (failed.status, failed.error) == ("failed", "boom")
        assert failed.finished_at is not None and failed.finished_at >= failed.started_at
        assert failed.started_at == running.started_at

    def test_transition_back_to_queued_clears_times(self, store):
        job = make_job(store)
        store.transition(job.id, from_statuses={"queued"}, to="running")
        assert store.transition(job.id, from_statuses={"running"}, to="queued")
        again = store.get_job(job.id)
        assert again.status == "queued" and again.started_at is None

    def test_transition_unknown_job_or_status(self, store):
        assert store.transition("000000000000", from_statuses={"queued"}, to="running") is False
        job = make_job(store)
        with pytest.raises(ValueError):
            store.transition(job.id, from_statuses={"queued"}, to="exploded")
        with pytest.raises(ValueError):
            store.transition(job.id, from_statuses={"waiting"}, to="running")
        assert store.transition(job.id, from_statuses=set(), to="running") is False
        assert store.get_job(job.id).status == "queued"

    def test_count_jobs_by_status(self, store):
        assert store.count_jobs_by_status() == dict.fromkeys(JOB_STATUSES, 0)
        jobs = [make_job(store) for _ in range(4)]
        store.transition(jobs[0].id, from_statuses={"queued"}, to="running")
        store.transition(jobs[1].id, from_statuses={"queued"}, to="cancelled")
        counts = store.count_jobs_by_status()
        assert counts == {"queued": 2, "running": 1, "cancelled": 1, "succeeded": 0, "failed": 0}


class TestTrials:
    def test_index_follows_first_report(self, store):
        job = make_job(store)
        for trial_id in ("t-c", "t-a", "t-b"):
            store.upsert_trial(job.id, trial_id, status="running")
        store.upsert_trial(job.id, "t-a", status="completed")  # updates keep the index
        assert [(t.trial_id, t.index) for t in store.list_trials(job.id)] == \
            [("t-c", 0), ("t-a", 1), ("t-b", 2)]
        other = make_job(store)
        assert store.upsert_trial(other.id, "t-z").index == 0  # numbering is per job

    def test_insert_defaults_and_update_merges(self, store):
        job = make_job(store)
        t = store.upsert_trial(job.id, "t1")
        assert (t.status, t.config, t.metrics, t.iteration, t.objective, t.gpu_ids) == \
            ("pending", {}, {}, 0, None, [])
        store.upsert_trial(job.id, "t1", status="running", config={"l2": 0.1}, node="10.0.0.2",
                           gpu_ids=["0", "1"], mlflow_run_id="run-1")
        t = store.upsert_trial(job.id, "t1", metrics={"val_accuracy": 0.8}, iteration=3,
                               objective=0.8)
        assert (t.status, t.config, t.node, t.gpu_ids, t.mlflow_run_id) == \
            ("running", {"l2": 0.1}, "10.0.0.2", ["0", "1"], "run-1")
        assert (t.metrics, t.iteration, t.objective) == ({"val_accuracy": 0.8}, 3, 0.8)
        assert t.updated_at >= t.created_at
        assert store.get_trial(job.id, "t1") == t
        assert store.get_trial(job.id, "nope") is None

    def test_non_finite_and_numpy_values(self, store):
        np = pytest.importorskip("numpy")
        job = make_job(store)
        t = store.upsert_trial(job.id, "t1", metrics={"loss": float("nan"), "acc": np.float32(0.5),
                                                      "hist": np.array([1, 2])},
                               objective=np.float64(0.25), iteration=np.int64(2))
        assert t.metrics == {"loss": None, "acc": 0.5, "hist": [1, 2]}
        assert t.objective == 0.25 and t.iteration == 2
        assert not any(isinstance(v, float) and math.isnan(v) for v in t.metrics.values())

    def test_trial_errors(self, store):
        with pytest.raises(NotFound):
            store.upsert_trial("000000000000", "t1", status="running")
        job = make_job(store)
        with pytest.raises(TypeError):
            store.upsert_trial(job.id, "t1", score=1.0)
        with pytest.raises(ValueError):
            store.upsert_trial(job.id, "t1", status="exploded")
        assert store.list_trials(job.id) == []

    def test_count_trials_by_status(self, store):
        a, b = make_job(store), make_job(store)
        store.upsert_trial(a.id, "1", status="running")
        store.upsert_trial(a.id, "2", status="completed")
        store.upsert_trial(b.id, "3", status="completed")
        assert store.count_trials_by_status(a.id) == {**dict.fromkeys(TRIAL_STATUSES, 0),
                                                      "running": 1, "completed": 1}
        assert store.count_trials_by_status()["completed"] == 2
        assert sum(store.count_trials_by_status(b.id).values()) == 1


    def test_record_writes_trials_events_and_best_at_once(self, store):
        job = make_job(store)
        store.upsert_trial(job.id, "m0", status="running", iteration=1)
        best = {"trial_id": "m1", "metric": 0.9}
        got = store.record(job.id,
                           trials=[("m0", {"iteration": 2, "metrics": {"acc": 0.5}}),
                                   ("m1", {"status": "running", "iteration": 2})],
                           events=[("trial_result", {"trial_id": "m0"}),
                                   ("trial_result", {"trial_id": "m1"})],
                           best=best)
        assert [(t.trial_id, t.index, t.iteration) for t in got] == [("m0", 0, 2), ("m1", 1, 2)]
        assert got == store.list_trials(job.id)
        assert got[0].status == "running" and got[0].metrics == {"acc": 0.5}
        assert [(ev.seq, ev.payload["trial_id"]) for ev in store.events_since(job.id)] == \
            [(1, "m0"), (2, "m1")]
        assert store.get_job(job.id).best == best
        assert store.record(job.id) == []

    @pytest.mark.parametrize("repeat", [False, True])
    def test_a_population_record_stores_what_row_by_row_calls_do(self, store, repeat):
        # 6 members (the batched path from 4 on): 3 known, 3 new, two sets of columns;
        # repeat: one id twice, which must apply in order (row by row).
        batched, one_by_one = make_job(store), make_job(store)
        ids = ["m0", "m1", "m2", "m3", "m4", "m5"] + (["m1"] if repeat else [])
        writes = [(t, {"status": "running", "iteration": 2, "metrics": {"acc": i / 10},
                       "objective": i / 10} if i % 2 else {"iteration": 3, "config": {"k": i}})
                  for i, t in enumerate(ids)]
        events = [("trial_result", {"trial_id": t, "n": i}) for i, t in enumerate(ids)]
        for job in (batched, one_by_one):
            for t in ("m4", "m0", "m2"):
                store.upsert_trial(job.id, t, status="running", iteration=1, node="n1")
            store.add_event(job.id, "round_started", {})
        got = store.record(batched.id, trials=writes, events=events)
        for trial_id, fields in writes:
            store.upsert_trial(one_by_one.id, trial_id, **fields)
        for kind, payload in events:
            store.add_event(one_by_one.id, kind, payload)

        def shape(trials):
            return [(t.trial_id, t.index, t.status, t.config, t.metrics, t.iteration,
                     t.objective, t.node) for t in trials]
        if not repeat:  # row by row, a repeated id's first write returns its state then
            assert shape(got) == shape(store.get_trial(batched.id, t) for t, _ in writes)
        assert shape(store.list_trials(batched.id)) == shape(store.list_trials(one_by_one.id))
        assert [(ev.seq, ev.kind, ev.payload) for ev in store.events_since(batched.id)] == \
            [(ev.seq, ev.kind, ev.payload) for ev in store.events_since(one_by_one.id)]
        assert store.add_event(batched.id, "tick", {}).seq == len(events) + 2  # counter kept

    def test_record_is_all_or_nothing(self, store):
        job = make_job(store)
        before = dump_database(store)
        with pytest.raises(TypeError):
            store.record(job.id, trials=[("m0", {"iteration": 1}), ("m1", {"colour": "red"})])
        with pytest.raises(ValueError):
            store.record(job.id, trials=[("m0", {"iteration": 1})], events=[("", {})])
        with pytest.raises(NotFound):
            store.record("0123456789ab", trials=[("m0", {"iteration": 1})])
        assert dump_database(store) == before


class TestEvents:
    def test_seq_starts_at_one_per_job(self, store):
        a, b = make_job(store), make_job(store)
        seqs_a = [store.add_event(a.id, "tick", {"i": i}).seq for i in range(3)]
        seqs_b = [store.add_event(b.id, "tick").seq for _ in range(2)]
        assert (seqs_a, seqs_b) == ([1, 2, 3], [1, 2])
        events = store.events_since(a.id)
        assert [(e.seq, e.kind, e.payload) for e in events] == \
            [(1, "tick", {"i": 0}), (2, "tick", {"i": 1}), (3, "tick", {"i": 2})]
        assert events[0].created_at.tzinfo is not None

    def test_events_since_and_limit(self, store):
        job = make_job(store)
        for i in range(6):
            store.add_event(job.id, "k", {"i": i})
        assert [e.seq for e in store.events_since(job.id, after_seq=4)] == [5, 6]
        assert [e.seq for e in store.events_since(job.id, after_seq=1, limit=2)] == [2, 3]
        assert store.events_since(job.id, after_seq=6) == []
        assert store.events_since("000000000000") == []

    def test_event_errors(self, store):
        with pytest.raises(NotFound):
            store.add_event("000000000000", "k", {})
        job = make_job(store)
        with pytest.raises(ValueError):
            store.add_event(job.id, "", {})
        assert store.events_since(job.id) == []


class TestHostileInput:
    """What an API caller can put in a path or header behaves the same on both backends:
    "not found" or ValueError, never a driver error (which the API would turn into a 500)."""

    BAD_ID = "abc\x00def"

    def test_unstorable_lookup_keys_are_not_found(self, store):
        job = make_job(store)
        assert store.get_job(self.BAD_ID) is None
        assert store.list_jobs(owner=self.BAD_ID) == []
        assert store.events_since(self.BAD_ID) == [] and store.list_trials(self.BAD_ID) == []
        assert store.get_trial(job.id, self.BAD_ID) is None
        assert sum(store.count_trials_by_status(self.BAD_ID).values()) == 0
        assert store.transition(self.BAD_ID, from_statuses={"queued"}, to="running") is False
        assert store.authenticate(self.BAD_ID) is None
        assert store.revoke_user(self.BAD_ID) is False
        for call in (lambda: store.update_job(self.BAD_ID, error="x"),
                     lambda: store.add_event(self.BAD_ID, "k"),
                     lambda: store.upsert_trial(self.BAD_ID, "t"),
                     lambda: store.issue_token(self.BAD_ID)):
            with pytest.raises(NotFound):
                call()

    def test_unstorable_values_are_value_errors(self, store):
        job = make_job(store)
        with pytest.raises(ValueError, match="idempotency_key"):
            store.create_job(name="j", owner="alice", spec={}, num_trials=1,
                             idempotency_key="k" * 201)
        with pytest.raises(ValueError, match="NUL"):
            store.create_user("ev\x00il")
        with pytest.raises(ValueError, match="trial_id"):
            store.upsert_trial(job.id, "t" * 201)
        with pytest.raises(ValueError, match="ray_submission_id"):
            store.update_job(job.id, ray_submission_id="s" * 201)
        with pytest.raises(ValueError, match="kind"):
            store.add_event(job.id, "k\x00")
        assert store.list_trials(job.id) == [] and store.get_job(job.id) == job


class TestLifecycle:
    def test_reopen_keeps_data(self, store):
        job = make_job(store)
        store.add_event(job.id, "k")
        again = SqlJobStore(store.url)
        try:
            assert again.get_job(job.id) == job
            assert again.add_event(job.id, "k").seq == 2
        finally:
            again.close()

    def test_context_manager_closes(self, store_url, backend):
        with SqlJobStore(store_url) as s:
            assert s.count_jobs_by_status()["queued"] >= 0
            pool = s.engine.pool
            assert pool.checkedout() == 0
        assert "password" not in repr(s)

    def test_store_error_hierarchy(self):
        assert issubclass(Conflict, StoreError) and issubclass(NotFound, KeyError)
        assert str(NotFound("no job x")) == "no job x"


def test_the_running_job_of_a_submission_is_found_only_while_it_runs(store) -> None:
    """What a standby driver polls for (service.launcher.standby)."""
    job = make_job(store)
    other = make_job(store, name="other")
    sid = "regtune-standby-0123456789ab"
    assert store.running_job_of(sid) is None
    assert store.transition(job.id, from_statuses={"queued"}, to="running",
                            ray_submission_id=sid)
    assert store.transition(other.id, from_statuses={"queued"}, to="running",
                            ray_submission_id="regtune-" + other.id)
    assert store.running_job_of(sid).id == job.id
    assert store.running_job_of("regtune-standby-ffffffffffff") is None
    assert store.running_job_of("bad\x00id") is None
    assert store.transition(job.id, from_statuses={"running"}, to="cancelled")
    assert store.running_job_of(sid) is None
