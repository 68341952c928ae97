"""Fair queueing of jobs across users: a pure policy, no I/O, no clock.

Which queued jobs should start now? Two limits apply: ``max_running_total``
(the cluster's capacity in jobs) and ``max_running_per_user`` (so one user
cannot hold the whole cluster). Within those, slots are shared round-robin
across users rather than first-come-first-served, so a user who queues twenty
jobs does not make a colleague's single job wait behind all of them.

The round-robin counts jobs already running as rounds already taken: each slot
goes to the eligible user with the fewest active (running or just-picked) jobs,
and each user's jobs start in FIFO order. With nothing running this is exactly
"one job per user per round, users in order of their oldest queued job".

Ties between users with equally many active jobs need memory. Seeing only the
queue, a rule cannot rotate a single freed slot: when alice's only running job
finishes she and bob both have none running, alice has the older backlog, and
she would win that slot every time while bob starves. So ties go first to the
user whose last job *start* is oldest (never-started users first), taken from
the running jobs' ``started_at`` and from the optional ``last_started`` map
(each user's latest start, finished jobs included: see
``JobStore.last_started_by_owner``), and only then to the user with the oldest
queued job. Without ``last_started`` the policy still holds both limits and is
fair whenever the per-user limit is below the total; pass it to be
starvation-free when one user can fill the cluster.

It takes any objects with ``id``, ``owner`` and ``created_at`` (the store's
:class:`~service.store.entities.Job` in practice) and returns the same objects.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar


class Schedulable(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def owner(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


class HasLimits(Protocol):
    @property
    def max_running_total(self) -> int: ...

    @property
    def max_running_per_user(self) -> int: ...


J = TypeVar("J", bound=Schedulable)
_UNLIMITED = 1 << 62


def _check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


class _FairQueue:
    """Per-user FIFO queues, active counts and service recency; ``take`` hands out slots."""

    def __init__(self, queued: Sequence[J], running: Sequence[Schedulable],
                 last_started: Mapping[str, datetime] | None) -> None:
        # Stable sort: jobs created in the same instant keep the caller's order.
        ordered = sorted(queued, key=lambda job: job.created_at)
        self.queues: dict[str, deque[J]] = {}
        for job in ordered:
            self.queues.setdefault(job.owner, deque()).append(job)
        # Dict order is the order of each user's oldest queued job.
        self.rank = {owner: i for i, owner in enumerate(self.queues)}
        self.active: Counter[str] = Counter(job.owner for job in running)
        # When each user was last served: (0,) never, (1, time) before this call,
        # (2, n) by the n-th pick of this call. Older service wins a tie.
        latest: dict[str, datetime] = dict(last_started or {})
        for job in running:
            started = getattr(job, "started_at", None)
            if started is not None and (job.owner not in latest or started > latest[job.owner]):
                latest[job.owner] = started
        self.served: dict[str, tuple[Any, ...]] = {u: (1, t) for u, t in latest.items()}
        self.picks = 0

    def _key(self, user: str) -> tuple[Any, ...]:
        return (self.active[user], self.served.get(user, (0,)), self.rank[user])

    def take(self, budget: int, per_user: int) -> list[J]:
        picked: list[J] = []
        while budget > 0:
            eligible = [u for u, q in self.queues.items() if q and self.active[u] < per_user]
            if not eligible:
                break
            user = min(eligible, key=self._key)
            # With one eligible user, nothing changes for the others until that user
            # runs out of budget, cap or jobs: take that run at once (same order, same
            # state after; a long single-user queue costs O(n), not O(n) loop rounds).
            run = 1 if len(eligible) > 1 else min(budget, per_user - self.active[user],
                                                  len(self.queues[user]))
            queue = self.queues[user]
            picked.extend(queue.popleft() for _ in range(run))
            self.active[user] += run
            self.picks += run
            self.served[user] = (2, self.picks)
            budget -= run
        return picked


def pick_jobs_to_start(queued: Sequence[J], running: Sequence[Schedulable], *,
                       max_running_total: int, max_running_per_user: int,
                       last_started: Mapping[str, datetime] | None = None) -> list[J]:
    """The queued jobs to start now, in start order, within both limits.

    If ``running`` already exceeds a limit (limits were lowered), nothing more
    starts for it; running jobs are never preempted.
    """
    total = _check_limit("max_running_total", max_running_total)
    per_user = _check_limit("max_running_per_user", max_running_per_user)
    return _FairQueue(queued, running, last_started).take(total - len(running), per_user)


def queue_positions(queued: Sequence[Schedulable], running: Sequence[Schedulable],
                    limits: HasLimits | None = None, *, max_running_total: int | None = None,
                    max_running_per_user: int | None = None,
                    last_started: Mapping[str, datetime] | None = None) -> dict[str, int]:
    """Each queued job's 1-based place in the order the fair policy would start them.

    Limits come from ``limits`` (anything with ``max_running_total`` and
    ``max_running_per_user``) or from the keywords. The jobs that
    :func:`pick_jobs_to_start` would start right now come first, in its order;
    the rest follow in the order they would get slots if slots freed one at a
    time, with the same fairness rule and each user's cap treated as freeing up
    as that user's own jobs finish. It is an estimate for humans ("3rd in
    line"): which running jobs finish first can still reorder users.
    """
    if limits is not None:
        max_running_total = limits.max_running_total
        max_running_per_user = limits.max_running_per_user
    if max_running_total is None or max_running_per_user is None:
        raise TypeError("pass limits or both max_running_total and max_running_per_user")
    total = _check_limit("max_running_total", max_running_total)
    per_user = _check_limit("max_running_per_user", max_running_per_user)
    fair = _FairQueue(queued, running, last_started)
    order = fair.take(total - len(running), per_user)
    order += fair.take(_UNLIMITED, _UNLIMITED)
    return {job.id: i for i, job in enumerate(order, start=1)}


def queue_position(owner: str, nth: int, backlog: Mapping[str, int],
                   running: Sequence[Any], *, max_running_total: int,
                   max_running_per_user: int,
                   last_started: Mapping[str, datetime] | None = None) -> int:
    """The place :func:`queue_positions` gives ``owner``'s ``nth`` queued job, from counts.

    ``backlog`` maps each user with queued jobs to how many, in the order of each
    user's oldest queued job; ``running`` holds objects with ``owner`` and
    ``started_at``. The answer is the same as ``queue_positions(...)[job.id]``, but
    its cost grows with the number of users, not of queued jobs: a submit answers
    with its job's place, and a flood of queued jobs made every submit decode the
    whole queue (bench B5).

    The jobs that start now are simulated pick by pick (at most the free slots).
    After that the order is a round-robin by active count: every user with a job at
    "level" L (its L-th active job) is served before any job at level L + 1, and
    within a level users go by (more active before the round began first, then the
    older service, then the older backlog). So the ``nth`` job, at level
    ``L = active + nth - 1``, comes after every job below L and after the users
    ahead of its owner at L.
    """
    total = _check_limit("max_running_total", max_running_total)
    per_user = _check_limit("max_running_per_user", max_running_per_user)
    if not 1 <= nth <= backlog.get(owner, 0):
        raise ValueError(f"{owner} has {backlog.get(owner, 0)} queued jobs, not {nth}")
    fair = _FairQueue([], running, last_started)
    remaining = dict(backlog)
    rank = {user: i for i, user in enumerate(remaining)}
    taken = 0  # of owner's jobs, in the simulated picks
    picked, budget = 0, total - len(running)
    while budget > 0:
        eligible = [u for u, q in remaining.items() if q and fair.active[u] < per_user]
        if not eligible:
            break
        user = min(eligible, key=lambda u: (fair.active[u], fair.served.get(u, (0,)), rank[u]))
        run = 1 if len(eligible) > 1 else min(budget, per_user - fair.active[user],
                                              remaining[user])
        if user == owner:
            if taken + run >= nth:
                return picked + nth - taken
            taken += run
        remaining[user] -= run
        fair.active[user] += run
        fair.picks += run
        fair.served[user] = (2, fair.picks)
        picked += run
        budget -= run

    def order(user: str) -> tuple[Any, ...]:
        return (-fair.active[user], fair.served.get(user, (0,)), rank[user])

    level = fair.active[owner] + nth - taken - 1
    before = nth - taken - 1  # owner's own earlier jobs
    for user, left in remaining.items():
        if user == owner or not left:
            continue
        below = level - fair.active[user]  # this user's jobs on the levels under ours
        before += max(0, min(left, below))
        if 0 <= below < left and order(user) < order(owner):
            before += 1
    return picked + before + 1
