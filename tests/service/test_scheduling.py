"""The fair-queue policy: round-robin across users within the limits, never starving anyone."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.scheduling import pick_jobs_to_start, queue_position, queue_positions
from service.store.entities import Job

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def at(t: float) -> datetime:
    return T0 + timedelta(seconds=t)


def job(id: str, owner: str, t: float, status: str = "queued",
        started: float | None = None) -> Job:
    return Job(id=id, name=id, owner=owner, status=status, spec={}, created_at=at(t),
               num_trials=1, started_at=None if started is None else at(started))


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


@dataclass
class Limits:
    max_running_total: int
    max_running_per_user: int


def three_users_at_once() -> list[Job]:
    """alice, bob and carol each submit three jobs within the same second."""
    out, t = [], 0.0
    for n in range(3):
        for user in ("alice", "bob", "carol"):
            out.append(job(f"{user[0]}{n}", user, t))
            t += 0.01
    return out


def test_three_users_get_slots_round_robin():
    queued = three_users_at_once()
    started = pick_jobs_to_start(queued, [], max_running_total=5, max_running_per_user=2)
    assert ids(started) == ["a0", "b0", "c0", "a1", "b1"]


def test_round_robin_even_when_one_user_queued_everything_first():
    queued = [job(f"a{n}", "alice", n) for n in range(4)] + [job("b0", "bob", 10),
                                                              job("c0", "carol", 11)]
    started = pick_jobs_to_start(queued, [], max_running_total=4, max_running_per_user=4)
    assert ids(started) == ["a0", "b0", "c0", "a1"]


def test_per_user_limit():
    queued = [job(f"a{n}", "alice", n) for n in range(5)]
    running = [job("ar", "alice", -1, "running")]
    started = pick_jobs_to_start(queued, running, max_running_total=10, max_running_per_user=3)
    assert ids(started) == ["a0", "a1"]


def test_total_limit_and_over_limit_running():
    queued = three_users_at_once()
    running = [job(f"r{n}", f"u{n}", -1, "running") for n in range(3)]
    assert ids(pick_jobs_to_start(queued, running, max_running_total=4,
                                  max_running_per_user=1)) == ["a0"]
    assert pick_jobs_to_start(queued, running, max_running_total=2, max_running_per_user=1) == []


def test_a_freed_slot_goes_to_the_user_with_fewer_running_jobs():
    # A plain per-call round-robin would give alice (oldest queued job) every slot.
    queued = [job(f"a{n}", "alice", n) for n in range(2, 10)] + [job("b0", "bob", 20)]
    running = [job("a0", "alice", 0, "running")]
    started = pick_jobs_to_start(queued, running, max_running_total=2, max_running_per_user=2)
    assert ids(started) == ["b0"]


def test_a_single_slot_rotates_given_last_started():
    """One slot, alice's backlog is older than bob's job, and alice's job just finished.

    Only the memory of who started last can give the slot to bob.
    """
    queued = [job(f"a{n}", "alice", n) for n in range(1, 6)] + [job("b0", "bob", 10)]
    pick = lambda **kw: ids(pick_jobs_to_start(queued, [], max_running_total=1,  # noqa: E731
                                               max_running_per_user=1, **kw))
    assert pick() == ["a1"]  # without memory: oldest queued job
    assert pick(last_started={"alice": at(50)}) == ["b0"]
    assert pick(last_started={"alice": at(50), "bob": at(60)}) == ["a1"]


def test_newcomer_beats_two_busy_users_under_default_limits():
    """total 2, 1 per user: alice and bob have backlogs, carol arrives, alice's job ends."""
    queued = ([job(f"a{n}", "alice", n) for n in range(1, 5)]
              + [job(f"b{n}", "bob", n + 0.5) for n in range(1, 5)] + [job("c0", "carol", 30)])
    running = [job("b0", "bob", 0.5, "running", started=20)]
    started = pick_jobs_to_start(queued, running, max_running_total=2, max_running_per_user=1,
                                 last_started={"alice": at(10), "bob": at(20)})
    assert ids(started) == ["c0"]


def test_fifo_within_a_user_regardless_of_input_order():
    queued = [job("a2", "alice", 2), job("a0", "alice", 0), job("a1", "alice", 1)]
    assert ids(pick_jobs_to_start(queued, [], max_running_total=2,
                                  max_running_per_user=2)) == ["a0", "a1"]


def test_queue_positions():
    queued = three_users_at_once()
    positions = queue_positions(queued, [], Limits(2, 1))
    assert positions == {"a0": 1, "b0": 2, "c0": 3, "a1": 4, "b1": 5, "c1": 6, "a2": 7,
                         "b2": 8, "c2": 9}
    # Keywords work too, and the jobs that would start now come first.
    running = [job("ar", "alice", -1, "running")]
    positions = queue_positions(queued, running, max_running_total=3, max_running_per_user=1)
    assert [k for k, _ in sorted(positions.items(), key=lambda kv: kv[1])][:3] == \
        ["b0", "c0", "a0"]


def test_bad_limits():
    with pytest.raises(ValueError):
        pick_jobs_to_start([], [], max_running_total=-1, max_running_per_user=1)
    with pytest.raises(TypeError):
        queue_positions([], [])


# --- properties --------------------------------------------------------------------

USERS = ["alice", "bob", "carol", "dave"]


@st.composite
def workloads(draw):
    n_queued = draw(st.integers(0, 25))
    owners = draw(st.lists(st.sampled_from(USERS), min_size=n_queued, max_size=n_queued))
    times = draw(st.lists(st.integers(0, 5), min_size=n_queued, max_size=n_queued))
    queued = [job(f"q{i}", o, t) for i, (o, t) in enumerate(zip(owners, times))]
    running_owners = draw(st.lists(st.sampled_from(USERS), max_size=8))
    running = [job(f"r{i}", o, -1, "running") for i, o in enumerate(running_owners)]
    total = draw(st.integers(0, 12))
    per_user = draw(st.integers(0, 5))
    return queued, running, total, per_user


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_limits_fifo_and_fairness(workload):
    queued, running, total, per_user = workload
    started = pick_jobs_to_start(queued, running, max_running_total=total,
                                 max_running_per_user=per_user)
    picked = Counter(j.owner for j in started)
    before = Counter(j.owner for j in running)
    after = before + picked
    # Limits: never exceeded (running jobs over a lowered limit are not preempted).
    assert len(set(ids(started))) == len(started) and set(ids(started)) <= set(ids(queued))
    assert len(running) + len(started) <= max(total, len(running))
    assert all(after[u] <= max(per_user, before[u]) for u in picked)
    assert all(picked[u] == 0 for u in picked if before[u] >= per_user)
    # FIFO: a user's started jobs are that user's oldest queued jobs.
    for user in picked:
        mine = sorted((j for j in queued if j.owner == user), key=lambda j: j.created_at)
        assert [j.created_at for j in started if j.owner == user] == \
            [j.created_at for j in mine[:picked[user]]]
    # Work-conserving and fair: a user left waiting below the cap means no slot was
    # free, and no user got a slot while having more active jobs than the waiting one.
    waiting = {j.owner for j in queued} - {u for u in picked
                                           if picked[u] == sum(j.owner == u for j in queued)}
    for user in waiting:
        if after[user] < per_user:
            assert len(running) + len(started) >= total
            assert all(after[v] - 1 <= after[user] for v in picked)
    # Positions: a permutation of 1..n that lists what starts now first.
    positions = queue_positions(queued, running, max_running_total=total,
                                max_running_per_user=per_user)
    assert sorted(positions.values()) == list(range(1, len(queued) + 1))
    assert [positions[j.id] for j in started] == list(range(1, len(started) + 1))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), total=st.integers(1, 4), per_user=st.integers(1, 3))
def test_no_user_starves_while_another_floods(seed, total, per_user):
    """alice submits faster than jobs finish; bob's and carol's jobs still start promptly.

    Under first-come-first-served they would wait behind alice's ever-growing backlog.
    """
    rng = random.Random(seed)
    queued: list[Job] = []
    running: list[Job] = []
    started_at: dict[str, int] = {}
    last_started: dict[str, datetime] = {}
    for tick in range(60):
        queued += [job(f"a{tick}.{k}", "alice", tick + k / 10) for k in range(rng.randint(2, 4))]
        if tick in (5, 6, 30):
            queued += [job(f"b{tick}", "bob", tick + 0.5), job(f"c{tick}", "carol", tick + 0.6)]
        if running:  # jobs take equally long: the one started first finishes, one per tick
            running.pop(0)
        for j in pick_jobs_to_start(queued, running, max_running_total=total,
                                    max_running_per_user=per_user, last_started=last_started):
            queued.remove(j)
            running.append(j)
            started_at[j.id] = tick
            last_started[j.owner] = at(tick)
        assert len(running) <= total
        assert max(Counter(j.owner for j in running).values(), default=0) <= per_user
    for light in ("b5", "c5", "b6", "c6", "b30", "c30"):
        submitted = int(light[1:])
        assert light in started_at, f"{light} never started"
        # One slot frees per tick and a job runs for at most `total` ticks, so bob
        # and carol wait for their own earlier job at most, not behind alice's
        # backlog (which grows by 1-3 jobs a tick: FIFO would make them wait ~2x
        # the tick they arrived at).
        assert started_at[light] - submitted <= 2 * total + 2


def _one_at_a_time(queued, running, total, per_user, last_started=None):
    """The fair queue's order, one pick per round (before the single-user shortcut)."""
    from service.scheduling import _UNLIMITED, _FairQueue

    fair = _FairQueue(queued, running, last_started)

    def take(budget, cap):
        picked = []
        while budget > 0:
            eligible = [u for u, q in fair.queues.items() if q and fair.active[u] < cap]
            if not eligible:
                break
            user = min(eligible, key=fair._key)
            picked.append(fair.queues[user].popleft())
            fair.active[user] += 1
            fair.picks += 1
            fair.served[user] = (2, fair.picks)
            budget -= 1
        return picked

    now = take(total - len(running), per_user)
    return now, now + take(_UNLIMITED, _UNLIMITED)


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_single_user_runs_are_taken_in_the_same_order(workload):
    queued, running, total, per_user = workload
    now, order = _one_at_a_time(queued, running, total, per_user)
    positions = queue_positions(queued, running, max_running_total=total,
                                max_running_per_user=per_user)
    assert positions == {j.id: i for i, j in enumerate(order, start=1)}
    started = pick_jobs_to_start(queued, running, max_running_total=total,
                                 max_running_per_user=per_user)
    assert ids(started) == ids(now)


@st.composite
def served_workloads(draw):
    """Like ``workloads``, with start times on running jobs and a last-started memory."""
    queued, running, total, per_user = draw(workloads())
    running = [job(j.id, j.owner, -1, "running", started=draw(st.integers(-9, -1)))
               for j in running]
    last = draw(st.dictionaries(st.sampled_from(USERS), st.integers(-12, -1)))
    return queued, running, total, per_user, {u: at(t) for u, t in last.items()}


@settings(max_examples=500, deadline=None)
@given(served_workloads())
def test_queue_position_from_counts_matches_the_fair_order(workload):
    """The closed form a submit uses gives every queued job the place the full order does."""
    queued, running, total, per_user, last = workload
    positions = queue_positions(queued, running, max_running_total=total,
                                max_running_per_user=per_user, last_started=last)
    backlog: dict[str, int] = {}
    nth: dict[str, int] = {}
    for j in sorted(queued, key=lambda j: j.created_at):  # stable, like the store's order
        backlog[j.owner] = backlog.get(j.owner, 0) + 1
        nth[j.id] = backlog[j.owner]
    for j in queued:
        assert queue_position(j.owner, nth[j.id], backlog, running, max_running_total=total,
                              max_running_per_user=per_user, last_started=last) \
            == positions[j.id], j.id


def test_queue_position_refuses_a_job_that_is_not_queued():
    with pytest.raises(ValueError, match="alice has 1 queued jobs, not 2"):
        queue_position("alice", 2, {"alice": 1}, [], max_running_total=1,
                       max_running_per_user=1)
