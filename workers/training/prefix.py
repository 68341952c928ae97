"""Shared training prefixes: trials that only differ from their start step on (issue 7, B3).

Before its ``reg_start_step`` a trial's schedule factor is exactly 0, and the
trainer then computes neither the penalty nor the study-000 blend: the loss is
the plain prediction loss. So trials that agree on everything that shapes
training *before* the start step train bit-identically until the earliest of
their start steps. Which parameters only act from the start step on:
``reg_start_step``, ``reg_ramp_steps``, ``reg_lambda``, ``l1_ratio``,
``smooth_l1_weight`` — plus ``huber_delta`` unless the base loss is
``smooth_l1``, ``focal_gamma``/``focal_alpha`` unless it is ``focal``, and
``momentum`` under Adam (the library's Adam ignores it). Everything else (task,
model, optimizer, seed, epochs, data root, lr, batch size, dropout, loss, …)
must be equal: :func:`prefix_key`.

A plan (:func:`plan`) is a tree per group of such setups: an unregularized
*trunk* trains from step 0, and each trial *forks* off it at its own start step
— a full copy of the trainer state at that step, mid-epoch if need be (in
memory: :meth:`StepTrainer.branch`; through disk: :class:`Snapshot` and
:meth:`StepTrainer.fork`) — and trains alone from there. A trial whose start step is at or after its last step
is never regularized and finishes on the trunk. Identical setups share one
branch. Compute, in optimizer steps, for one group of trials with total steps T
and fork steps f_i = min(start_i, T)::

    shared      = max_i f_i + Σ_i (T − f_i)      (trunk + branches)
    independent = N · T

:func:`run_plan` executes the tree depth-first (the trunk, then each branch as
soon as the trunk reaches its fork step, so at most two trainers are alive) and
gives every trial exactly the per-epoch metrics an independent
:class:`~workers.training.trainer.Trainer` run reports — bit-identical on the
same machine (the same operations run in the same order; tests compare the
dictionaries with ``==``).

The step-level loop (:class:`StepTrainer`, with :func:`prefix_key`, which its
forks check) lives in :mod:`workers.training.step_trainer`, not in the trainer: it
drives a ``Trainer``'s own step, RNG scope and evaluation, and adds only what a
mid-epoch fork needs — the epoch's data permutation and the position in it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Sequence

import torch

from search_spaces import catalog
from workers.training.setup import TrialSetup
from workers.training.step_trainer import (POST_START_PARAMS, Snapshot, StepTrainer,
                                           prefix_key)
from workers.training.tasks import load_task

#: ``on_epoch(setup_index, metrics)``; returning ``False`` stops that trial.
EpochCallback = Callable[[int, dict[str, float]], "bool | None"]


# --- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Branch:
    """Trials that leave the trunk at ``fork_step`` with one identical setup."""

    fork_step: int
    members: tuple[int, ...]  # indices into the plan's setups; members[0]'s setup is trained
    steps: int  # optimizer steps the branch trains (total − fork_step)


@dataclass(frozen=True)
class PrefixGroup:
    """One tree: an unregularized trunk and the branches that fork off it."""

    members: tuple[int, ...]
    trunk: TrialSetup  # the group's setup with regularization never starting
    steps_per_epoch: int
    total_steps: int
    branches: tuple[Branch, ...]  # ordered by fork step
    on_trunk: tuple[int, ...]  # trials whose start is at/after their last step

    @property
    def trunk_steps(self) -> int:
        """Steps the trunk trains: to the last fork, or to the end if a trial stays on it."""
        if self.on_trunk:
            return self.total_steps
        return max((b.fork_step for b in self.branches), default=0)

    @property
    def steps(self) -> int:
        return self.trunk_steps + sum(b.steps for b in self.branches)

    @property
    def independent_steps(self) -> int:
        return len(self.members) * self.total_steps


@dataclass(frozen=True)
class PrefixPlan:
    """The trees for a list of setups (``setups[i]`` is trial i throughout)."""

    setups: tuple[TrialSetup, ...]
    groups: tuple[PrefixGroup, ...]

    @property
    def steps(self) -> int:
        """Optimizer steps the plan trains when no trial is stopped early."""
        return sum(g.steps for g in self.groups)

    @property
    def independent_steps(self) -> int:
        """Optimizer steps of training every setup on its own."""
        return sum(g.independent_steps for g in self.groups)

    @property
    def ratio(self) -> float:
        """steps / independent_steps: the share of independent compute the plan costs."""
        return self.steps / self.independent_steps if self.independent_steps else 0.0

    def describe(self) -> str:
        """The trees as text (for logs)."""
        lines = []
        for n, g in enumerate(self.groups):
            lines.append(f"group {n}: {len(g.members)} trials, trunk 0→{g.trunk_steps} of "
                         f"{g.total_steps} steps; {g.steps} steps vs {g.independent_steps} "
                         "independent")
            for b in g.branches:
                lines.append(f"  fork at {b.fork_step}: trials {list(b.members)} "
                             f"({b.steps} steps)")
            if g.on_trunk:
                lines.append(f"  on the trunk to the end: trials {list(g.on_trunk)}")
        return "\n".join(lines)


def _never_regularized(setup: TrialSetup, total_steps: int) -> TrialSetup:
    params = {**setup.params, "reg_start_step": total_steps, "reg_ramp_steps": 0,
              "reg_lambda": 0.0, "smooth_l1_weight": 0.0}
    return dataclasses.replace(setup, params=params)


def _n_train(setup: TrialSetup, cache: dict[tuple[Any, ...], int]) -> int:
    key = (setup.task, repr(sorted(setup.task_options.items())), str(setup.data_root))
    if key not in cache:
        cache[key] = len(load_task(setup.task).load(setup.task_options, setup.data_root).x_train)
    return cache[key]


def plan(setups: Sequence[TrialSetup], *, n_train: int | None = None) -> PrefixPlan:
    """Group ``setups`` by :func:`prefix_key` and lay out each group's trunk and forks.

    The number of training rows (hence steps per epoch) is read from the task's
    data, loaded once per distinct task; ``n_train`` overrides it for every setup.
    """
    setups = tuple(setups)
    by_key: dict[tuple[Any, ...], list[int]] = {}
    for i, s in enumerate(setups):
        by_key.setdefault(prefix_key(s), []).append(i)
    cache: dict[tuple[Any, ...], int] = {}
    groups = []
    for members in by_key.values():
        first = setups[members[0]]
        rows = n_train if n_train is not None else _n_train(first, cache)
        per_epoch = catalog.steps_per_epoch(rows, int(first.params["batch_size"]))
        total = per_epoch * first.epochs
        branches: dict[tuple[int, Any], list[int]] = {}
        on_trunk = []
        for i in members:
            fork = int(setups[i].params["reg_start_step"])
            if fork >= total:
                on_trunk.append(i)
                continue
            same = next((key for key in branches
                         if key[0] == fork and setups[branches[key][0]] == setups[i]), None)
            branches.setdefault(same or (fork, i), []).append(i)
        ordered = sorted(branches.items(), key=lambda item: (item[0][0], item[1][0]))
        groups.append(PrefixGroup(
            members=tuple(members), trunk=_never_regularized(first, total),
            steps_per_epoch=per_epoch, total_steps=total,
            branches=tuple(Branch(fork_step=key[0], members=tuple(idx), steps=total - key[0])
                           for key, idx in ordered),
            on_trunk=tuple(on_trunk)))
    return PrefixPlan(setups=setups, groups=tuple(groups))


# --- running a plan -----------------------------------------------------------------------


@dataclass
class PlanRun:
    """What :func:`run_plan` did: per-trial histories and the compute it took."""

    histories: list[list[dict[str, float]]]  # histories[i]: trial i's per-epoch metrics
    steps: int = 0  # optimizer steps executed
    evaluations: int = 0  # full evaluations (train + validation split) executed
    forks: int = 0
    stopped: set[int] = field(default_factory=set)

    @property
    def independent_steps(self) -> int:
        """Steps independent runs would have taken for the same epochs of every trial."""
        return sum(int(h[-1]["step"]) for h in self.histories if h)

    @property
    def independent_evaluations(self) -> int:
        return sum(len(h) for h in self.histories)

    @property
    def ratio(self) -> float:
        return self.steps / self.independent_steps if self.independent_steps else 0.0


def run_plan(prefix_plan: PrefixPlan, on_epoch: EpochCallback | None = None,
             device: torch.device | None = None, skip: Collection[int] = ()) -> PlanRun:
    """Train every setup of the plan, sharing prefixes; metrics as independent runs give.

    ``on_epoch(i, metrics)`` is called for trial i's every epoch, in order per
    trial (trials interleave: a branch runs to its end before the trunk goes on).
    Returning ``False`` stops trial i (early stopping): it forks no branch and
    a branch or trunk nobody needs any more stops training. Trials in ``skip``
    count as stopped from the start (a restarted run whose outcome for them is
    already known): their branches are never trained, and the trunk only goes
    as far as the other trials need.
    """
    setups = prefix_plan.setups
    result = PlanRun(histories=[[] for _ in setups], stopped=set(skip))

    def deliver(indices: Sequence[int], metrics: dict[str, float]) -> bool:
        """Give ``metrics`` to the live trials among ``indices``; False if none is left."""
        alive = False
        for i in indices:
            if i in result.stopped:
                continue
            result.histories[i].append(dict(metrics))
            if on_epoch is not None and on_epoch(i, dict(metrics)) is False:
                result.stopped.add(i)
            else:
                alive = True
        return alive

    def live(indices: Sequence[int]) -> bool:
        return any(i not in result.stopped for i in indices)

    for group in prefix_plan.groups:
        trunk = StepTrainer(group.trunk, device)

        def on_trunk_epoch(metrics: dict[str, float], group: PrefixGroup = group) -> bool:
            boundary = int(metrics["step"])
            waiting = [i for b in group.branches if b.fork_step >= boundary for i in b.members]
            return deliver(waiting + list(group.on_trunk), metrics)

        for branch in group.branches:
            if not live(branch.members):
                continue
            trunk.run_to(branch.fork_step, on_trunk_epoch)
            if not live(branch.members):  # stopped at the last trunk epoch
                continue
            child = trunk.branch(setups[branch.members[0]])
            result.forks += 1
            child.run_to(child.total_steps,
                         lambda m, b=branch: deliver(b.members, m))
            result.steps += child.steps_run
            result.evaluations += child.evaluations
        if live(group.on_trunk):
            trunk.run_to(group.total_steps, on_trunk_epoch)
        result.steps += trunk.steps_run
        result.evaluations += trunk.evaluations
    return result


__all__ = ["POST_START_PARAMS", "Branch", "PlanRun", "PrefixGroup", "PrefixPlan", "Snapshot",
           "StepTrainer", "plan", "prefix_key", "run_plan"]
