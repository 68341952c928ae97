"""Shared prefixes inside a population trial (``search.share_prefixes: true``).

A population trial (``workers.tune.population``) normally trains its K members
as one batched model. With ``share_prefixes`` it first groups them by
:func:`workers.training.prefix.prefix_key`: members that agree on everything
that acts before their ``reg_start_step`` train that prefix once, on an
unregularized trunk, and each forks off at its own start step. By default a
group trains as one batched population whose rows fork off a batched trunk
(:class:`workers.training.population_prefix.SharedPrefixPopulation`; metrics
within the population tolerance, several times less CPU time on small models,
bench B3). With ``search.exact_prefixes`` each branch is a trainer of its own
(:func:`workers.training.prefix.run_plan`, bit-identical to training it alone).
Members that share with nobody gain nothing from a trunk; they are trained
batched as before (``PopulationTrainer``), so sharing never gives up the
batching of the members it cannot help.

What the driver sees does not change: each report holds every member's last
metrics under ``members`` and the callbacks (``reporting._Units``) record, per
member, a result whose ``epoch`` is newer than the last one recorded. Because
``run_plan`` is depth-first (a branch runs to its end before the trunk goes
on), members advance at different times, so a report is sent before any
member's metrics would be overwritten by its next epoch: every epoch of every
member reaches MLflow and the store. A member with no epoch yet is reported as
``{"epoch": 0}`` — left out, ``_Units`` would fall back to the result's
``training_iteration`` and record an empty result in its name.

Early stopping inside the population is asynchronous successive halving
(:class:`ArrivalRungs`, ASHA's rule): members reach a rung one after another,
so a member is compared with those recorded at the rung before it.

Checkpoints: a small JSON state (each member's last metrics, which members are
finished, the rung records), saved whenever a member's outcome becomes final.
A restarted trial skips finished members (their branches are never trained
again) and re-trains the others from step 0; the epochs it reports again are
identical and are dropped by the callbacks' per-epoch dedup.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from search_spaces import SearchSpec
from workers.tune.population import MEMBERS, MemberRungs, pack_members
from workers.tune.space import trial_params

STATE_FILE = "shared_prefix.json"
#: ``emit(result, checkpoint)``: send one result; ``checkpoint`` when a member finished.
Emit = Callable[[dict[str, Any], bool], None]


@dataclass
class SharedProgress:
    """What a shared-prefix population has produced so far (its checkpoint)."""

    last: dict[int, dict[str, float]] = field(default_factory=dict)  # member -> last metrics
    done: set[int] = field(default_factory=set)  # completed or stopped: outcome final
    rungs: dict[int, dict[int, float]] = field(default_factory=dict)  # rung -> member -> value
    #: Work done by every run of this trial so far (steps, evaluations, forks): in the
    #: checkpoint so the compute of a restarted trial adds up, and can be read back.
    compute: dict[str, int] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        data = {"last": self.last, "done": sorted(self.done), "compute": self.compute,
                "rungs": {str(r): {str(m): v for m, v in vals.items()}
                          for r, vals in self.rungs.items()}}
        (directory / STATE_FILE).write_text(json.dumps(data))

    @classmethod
    def load(cls, directory: Path) -> "SharedProgress":
        data = json.loads((directory / STATE_FILE).read_text())
        return cls(last={int(k): v for k, v in data["last"].items()},
                   done={int(m) for m in data["done"]},
                   rungs={int(r): {int(m): float(v) for m, v in vals.items()}
                          for r, vals in data["rungs"].items()},
                   compute={k: int(v) for k, v in data.get("compute", {}).items()})

    def independent_steps(self) -> int:
        """Steps independent runs would take for the epochs every member has reported."""
        return sum(int(m.get("step", 0)) for m in self.last.values())


class ArrivalRungs:
    """ASHA's rule for members that reach each rung one after another.

    At a rung (the epochs of :class:`MemberRungs`) a member is stopped when its
    value is worse than the (1 − 1/reduction_factor) quantile of the values
    recorded there before it — Ray's ``AsyncHyperBandScheduler`` cutoff. Records
    are keyed by member, so a member arriving again after a restart keeps the
    decision it got the first time (it continued, or it would be finished).
    """

    def __init__(self, spec: SearchSpec, progress: SharedProgress) -> None:
        base = MemberRungs(spec)
        self.enabled, self.rung_epochs = base.enabled, base.rungs
        self.metric, self.mode, self.factor = base.metric, base.mode, base.factor
        self.records = progress.rungs

    def keep(self, member: int, epoch: int, metrics: dict[str, float]) -> bool:
        if not self.enabled or epoch not in self.rung_epochs:
            return True
        recorded = self.records.setdefault(epoch, {})
        if member in recorded:
            return True
        value = float(metrics.get(self.metric, math.nan))
        sign = 1.0 if self.mode == "max" else -1.0
        others = [sign * v for v in recorded.values() if not math.isnan(v)]
        recorded[member] = value
        if not others or math.isnan(value):
            return True
        import numpy as np

        cutoff = float(np.percentile(others, (1 - 1 / self.factor) * 100))
        return not sign * value < cutoff


class SharedReporter:
    """Turns per-member epochs into population results the driver's callbacks accept."""

    def __init__(self, spec: SearchSpec, size: int, epochs: int, progress: SharedProgress,
                 emit: Emit) -> None:
        self.metric, self.mode = spec.objective.objectives()[0]
        self.size, self.epochs, self.progress, self.emit = size, epochs, progress, emit
        self.pending: set[int] = set()
        self.finished_since = False
        self.reports = 0
        self.extra: dict[str, Any] = {}

    def add(self, member: int, metrics: dict[str, float], stopped: bool) -> None:
        """Member ``member`` finished an epoch; ``stopped``: the rungs end it here."""
        known = self.progress.last.get(member)
        if known is not None and int(known.get("epoch", 0)) >= int(metrics["epoch"]):
            return  # re-trained after a restart: already reported
        if member in self.pending:
            self.flush()  # its previous epoch must reach the driver first
        self.progress.last[member] = dict(metrics)
        self.pending.add(member)
        if stopped or int(metrics["epoch"]) >= self.epochs:
            self.progress.done.add(member)
            self.finished_since = True

    def result(self) -> dict[str, Any]:
        last = self.progress.last
        values = [m[self.metric] for m in last.values() if self.metric in m]
        best = (max if self.mode == "max" else min)(values) if values else math.nan
        return {self.metric: best,
                "epoch": max((int(m.get("epoch", 0)) for m in last.values()), default=0),
                MEMBERS: pack_members({i: last.get(i, {"epoch": 0}) for i in range(self.size)}),
                "members_active": self.size - len(self.progress.done), **self.extra}

    def flush(self, force: bool = False) -> None:
        if not self.pending and not force:
            return
        self.emit(self.result(), self.finished_since)
        self.pending.clear()
        self.finished_since = False
        self.reports += 1


@dataclass
class SharedStats:
    """The compute a shared-prefix population took, against independent training."""

    steps: int = 0  # optimizer steps trained (a batched member's steps count per member)
    independent_steps: int = 0  # steps independent runs with the same stops would take
    evaluations: int = 0
    forks: int = 0
    shared_members: list[int] = field(default_factory=list)
    batched_members: list[int] = field(default_factory=list)
    plan: str = ""

    def add(self, other: Any) -> None:
        """Add another run's compute (SharedStats, or run_plan's PlanRun)."""
        self.steps += other.steps
        self.independent_steps += other.independent_steps
        self.evaluations += other.evaluations
        self.forks += other.forks


def _batched(setups: Sequence[Any], members: list[int], device: Any, on_epoch: Callable,
             shared: bool = False) -> SharedStats | None:
    """Train ``members`` as one batched population, or with ``shared`` as one
    SharedPrefixPopulation (one prefix group); None when they cannot be batched."""
    from workers.training.population import PopulationTrainer
    from workers.training.population_prefix import SharedPrefixPopulation

    kind = SharedPrefixPopulation if shared else PopulationTrainer
    try:
        population = kind([setups[i] for i in members], device)
    except ValueError:
        return None
    stats, reached = SharedStats(), {}
    while not population.done:
        for position, metrics in zip(population.active, population.train_epoch()):
            reached[position] = int(metrics["step"])
            stats.evaluations += 1
            if on_epoch(members[position], metrics) is False:
                population.stop(position)
    stats.independent_steps = sum(reached.values())
    if shared:
        stats.steps, stats.forks = population.row_steps, len(members) - 1
        stats.shared_members = list(members)
    else:
        stats.steps, stats.batched_members = stats.independent_steps, list(members)
    return stats


def train_members(spec: SearchSpec, setups: Sequence[Any], device: Any, emit: Emit,
                  progress: SharedProgress | None = None) -> SharedStats:
    """Train a population's members sharing prefixes; report through ``emit``.

    Groups of two or more members (by ``prefix_key``) run with ``run_plan``;
    the members left alone are batched together when they can be, else they
    run on ``run_plan`` too (a one-member tree costs exactly its own steps).
    """
    from workers.training.prefix import PrefixPlan, plan, run_plan

    progress = progress or SharedProgress()
    rungs = ArrivalRungs(spec, progress)
    reporter = SharedReporter(spec, len(setups), spec.train.epochs, progress, emit)

    def on_epoch(member: int, metrics: dict[str, float]) -> bool:
        keep = rungs.keep(member, int(metrics["epoch"]), metrics)
        reporter.add(member, metrics, stopped=not keep)
        return keep

    full = plan(setups)
    trees = [g for g in full.groups if len(g.members) > 1]
    alone = [g.members[0] for g in full.groups if len(g.members) == 1]
    stats = SharedStats()
    todo = [i for i in alone if i not in progress.done]
    batched = _batched(setups, todo, device, on_epoch) if len(todo) > 1 else None
    if batched is None:
        trees = list(full.groups)
    else:
        stats = batched
    shared: list[int] = []
    if not spec.search.exact_prefixes:  # each group as one batched population, if it can be
        for group in list(trees):
            left = [i for i in group.members if i not in progress.done]
            done = (_batched(setups, left, device, on_epoch, shared=True)
                    if len(left) > 1 else None)
            if done is not None:
                trees.remove(group)
                shared += group.members
                stats.add(done)
    stats.add(run_plan(PrefixPlan(setups=full.setups, groups=tuple(trees)), on_epoch, device,
                       skip=progress.done))
    stats.shared_members = sorted(shared + [i for g in trees for i in g.members])
    stats.plan = PrefixPlan(setups=full.setups, groups=tuple(trees)).describe() + (
        f"\nbatched with shared prefixes: members {sorted(shared)}" if shared else "")
    # The last result and checkpoint carry the compute of every run of this trial
    # (not catalogue metrics, so the callbacks do not log them).
    for key, value in (("steps", stats.steps), ("evaluations", stats.evaluations),
                       ("forks", stats.forks)):
        progress.compute[key] = progress.compute.get(key, 0) + value
    reporter.extra = {f"prefix_{k}": v for k, v in progress.compute.items()}
    reporter.extra["prefix_independent_steps"] = progress.independent_steps()
    reporter.flush(force=True)
    return stats


def train_shared_population(config: dict[str, Any], spec_json: dict[str, Any]) -> None:
    """The population trainable's body with ``search.share_prefixes`` (see the module)."""
    import ray
    from ray import tune

    from workers.training import build_setup
    from workers.tune.trainable import placement, prepare_worker

    spec = SearchSpec.model_validate(spec_json)
    setups = [build_setup(spec, trial_params(spec, c)) for c in config[MEMBERS]]
    device = prepare_worker(spec)
    progress = SharedProgress()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            progress = SharedProgress.load(Path(directory))
    where = placement(ray)

    def emit(result: dict[str, Any], save: bool) -> None:
        result = {**result, **where}
        if not save:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as directory:
            progress.save(Path(directory))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))

    stats = train_members(spec, setups, device, emit, progress)
    print(f"shared prefixes: {stats.steps} steps for {stats.independent_steps} independent; "
          f"{stats.forks} forks\n{stats.plan}", flush=True)
