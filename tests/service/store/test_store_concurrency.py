"""Concurrent writers on every backend: threads, and separate processes.

The API process and the Ray driver process write the same job at once, so
these are the properties the service relies on: a cancel and a start cannot
both win; event seqs are unique, gap-free and become visible in order; trial
indexes are unique; an idempotent submit retried concurrently creates one job;
and SQLite never answers "database is locked".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from service.store.sql import SqlJobStore

REPO = Path(__file__).resolve().parents[3]


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def new_job(store: SqlJobStore, owner: str = "alice") -> str:
    return store.create_job(name="c", owner=owner, spec={}, num_trials=1)[0].id


def test_cancel_and_start_race_exactly_one_wins(store):
    for _ in range(12):
        job_id = new_job(store)
        moves = [("cancelled", {"error": "cancelled by alice"}), ("running", {})]
        won = race(2, lambda i: store.transition(job_id, from_statuses={"queued"},
                                                 to=moves[i][0], **moves[i][1]))
        assert sorted(won) == [False, True]
        final = store.get_job(job_id)
        assert final.status == moves[won.index(True)][0]
        assert (final.started_at is None) == (final.status == "cancelled")
        # The loser's next move sees the winner's state: a cancel of a running job works.
        if final.status == "running":
            assert store.transition(job_id, from_statuses={"queued", "running"}, to="cancelled")


def test_event_seqs_unique_and_visible_in_order(store):
    job_id = new_job(store)
    writers, per_writer = 4, 20
    seen: list[int] = []
    done = threading.Event()

    def poll() -> None:
        # A poller that resumes from the last seq it saw must see every seq once,
        # in order: seq numbers must not become visible out of order.
        last = 0
        while True:
            finished = done.is_set()  # read once more after the writers are done
            for event in store.events_since(job_id, after_seq=last):
                seen.append(event.seq)
                last = event.seq
            if finished:
                return

    def write(i: int) -> list[int]:
        return [store.add_event(job_id, "tick", {"writer": i, "n": n}).seq
                for n in range(per_writer)]

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        per_thread = race(writers, write)
    finally:
        done.set()
        poller.join(timeout=60)
    everything = [e.seq for e in store.events_since(job_id, limit=10_000)]
    assert everything == list(range(1, writers * per_writer + 1))
    assert seen == everything
    for seqs in per_thread:
        assert seqs == sorted(seqs)  # each writer's own events are ordered
    payloads = {(e.payload["writer"], e.payload["n"])
                for e in store.events_since(job_id, limit=999)}
    assert len(payloads) == writers * per_writer


def test_trial_indexes_unique_under_concurrent_inserts(store):
    job_id = new_job(store)

    def report(i: int) -> None:
        for n in range(6):
            store.upsert_trial(job_id, f"w{i}-t{n}", status="running", iteration=n)
            store.upsert_trial(job_id, "shared", metrics={"writer": i})  # same new trial, racing

    race(4, report)
    trials = store.list_trials(job_id)
    assert len(trials) == 4 * 6 + 1
    assert [t.index for t in trials] == list(range(len(trials)))


def test_idempotent_submit_race_creates_one_job(store):
    results = race(4, lambda i: store.create_job(name="x", owner="alice", spec={}, num_trials=1,
                                                 idempotency_key="same-request"))
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    assert len(store.list_jobs(owner="alice")) == 1


WORKER = textwrap.dedent("""
    import sys
    from service.store.sql import SqlJobStore
    url, job_id, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = SqlJobStore(url)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()  # start together
    for i in range(n):
        store.add_event(job_id, "proc", {"who": name, "i": i})
        store.upsert_trial(job_id, f"{name}-{i % 5}", status="running", iteration=i)
    store.close()
    print("done")
""")


def test_two_processes_write_one_job(store):
    """Like the API process and the Ray driver: separate engines, separate processes."""
    job_id, n = new_job(store), 30
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, store.url, job_id, name, str(n)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("api", "driver")]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        # Meanwhile this process reads, as the API does.
        while any(p.poll() is None for p in procs):
            store.events_since(job_id)
            store.list_trials(job_id)
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.strip() == "done", err
        assert "locked" not in err
    seqs = [e.seq for e in store.events_since(job_id, limit=10_000)]
    assert seqs == list(range(1, 2 * n + 1))
    trials = store.list_trials(job_id)
    assert sorted(t.trial_id for t in trials) == sorted(f"{w}-{i}" for w in ("api", "driver")
                                                        for i in range(5))
    assert [t.index for t in trials] == list(range(10))
