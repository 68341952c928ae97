"""Fair queueing of jobs across users: a pure policy, no I/O, no clock.

Which queued jobs should start now? Two limits apply: ``max_running_total``
(the cluster's capacity in jobs) and ``max_running_per_user`` (so one user
cannot hold the whole cluster). Within those, slots are shared round-robin
across users rather than first-come-first-served, so a user who queues twenty
jobs does not make a colleague's single job wait behind all of them.

The round-robin counts jobs already running as rounds already taken: each slot
goes to the eligible user with the fewest active (running or just-picked) jobs,
ties broken by the age of the user's oldest queued job, and each user's jobs
start in FIFO order. With nothing running this is exactly "one job per user per
round, users in order of their oldest queued job"; with jobs running it keeps
the rotation going across supervisor ticks instead of restarting it (a plain
per-call round-robin would hand every single freed slot to the same oldest user).

It takes any objects with ``id``, ``owner`` and ``created_at`` (the store's
:class:`~service.store.entities.Job` in practice) and returns the same objects.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar


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
    """Per-user FIFO queues plus each user's active count; ``take`` hands out slots."""

    def __init__(self, queued: Sequence[J], running: Sequence[Schedulable]) -> None:
        # Stable sort: jobs created in the same instant keep the caller's order.
        ordered = sorted(queued, key=lambda job: job.created_at)
        self.queues: dict[str, deque[J]] = {}
        for job in ordered:
            self.queues.setdefault(job.owner, deque()).append(job)
        # Dict order is the order of each user's oldest queued job: the round order.
        self.rank = {owner: i for i, owner in enumerate(self.queues)}
        self.active: Counter[str] = Counter(job.owner for job in running)

    def take(self, budget: int, per_user: int) -> list[J]:
        picked: list[J] = []
        while budget > 0:
            eligible = [u for u, q in self.queues.items() if q and self.active[u] < per_user]
            if not eligible:
                break
            user = min(eligible, key=lambda u: (self.active[u], self.rank[u]))
            picked.append(self.queues[user].popleft())
            self.active[user] += 1
            budget -= 1
        return picked


def pick_jobs_to_start(queued: Sequence[J], running: Sequence[Schedulable], *,
                       max_running_total: int, max_running_per_user: int) -> list[J]:
    """The queued jobs to start now, in start order, within both limits.

    If ``running`` already exceeds a limit (limits were lowered), nothing more
    starts for it; running jobs are never preempted.
    """
    total = _check_limit("max_running_total", max_running_total)
    per_user = _check_limit("max_running_per_user", max_running_per_user)
    return _FairQueue(queued, running).take(total - len(running), per_user)


def queue_positions(queued: Sequence[Schedulable], running: Sequence[Schedulable],
                    limits: HasLimits | None = None, *, max_running_total: int | None = None,
                    max_running_per_user: int | None = None) -> dict[str, int]:
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
    fair = _FairQueue(queued, running)
    order = fair.take(total - len(running), per_user)
    order += fair.take(_UNLIMITED, _UNLIMITED)
    return {job.id: i for i, job in enumerate(order, start=1)}
