"""Batched populations in Tune: one Tune trial trains K search trials as one model.

With ``search.population: K`` the per-trial overhead (a worker, a process, a
report) is paid once per K trials, and K small models share every matrix
product (``workers.training.population``). The search still sees K separate
trials:

* ``PopulationSearcher`` asks the sampler for K configurations per Tune trial
  and, when it ends, tells the sampler each member's own last result;
* the trainable reports every member's metrics each epoch under ``members``;
  the driver's callbacks (``member_units``) fan them out to one store record and
  one MLflow child run per member, named ``<tune trial id>-m<i>``;
* early stopping is decided per member inside the population, by successive
  halving over the members that reached each rung (``MemberRungs``), so a weak
  member stops training while its neighbours go on. Tune's own scheduler is
  FIFO: it only sees whole populations.

With ``search.share_prefixes`` the trainable hands the members to
``workers.tune.shared_prefix`` instead, which trains shared prefixes once and
reports in the same shape.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ray.tune.search import Searcher

from search_spaces import SearchSpec
from workers.tune.space import trial_params

MEMBERS = "members"


def member_id(trial_id: str, index: int) -> str:
    return f"{trial_id}-m{index}"


class PopulationSearcher(Searcher):
    """K suggestions of an inner searcher per Tune trial, K results told back."""

    def __init__(self, inner: Any, size: int, total: int) -> None:
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner = inner
        self.size = size
        self.total = total
        self.issued = 0
        self.members: dict[str, list[str]] = {}

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        wanted = min(self.size, self.total - self.issued)
        if wanted <= 0:
            return Searcher.FINISHED
        configs, ids = [], []
        for index in range(wanted):
            config = self.inner.suggest(member_id(trial_id, index))
            if config is None or config == Searcher.FINISHED:
                break
            configs.append(config)
            ids.append(member_id(trial_id, index))
        if not configs:
            return Searcher.FINISHED
        self.issued += len(configs)
        self.members[trial_id] = ids
        return {MEMBERS: configs}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        finals = member_results(result or {})
        for index, mid in enumerate(self.members.pop(trial_id, [])):
            final = finals.get(index)
            self.inner.on_trial_complete(mid, result=final, error=error or final is None)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


def pack_members(last: dict[int, dict[str, Any]]) -> str:
    """The members' metrics as one JSON string, the value of ``MEMBERS`` in a result.

    Not a nested dict: Tune flattens every result and keeps running statistics
    (max, min, moving averages) of each numeric leaf, then serialises all of them
    into every experiment snapshot (then taken after every step). With K members of a
    dozen metrics that was most of the driver's time per result, and a trial waits
    for the driver between two epochs. A string is one leaf Tune passes through.
    """
    return json.dumps({str(i): m for i, m in last.items()})


def member_results(result: dict) -> dict[int, dict[str, Any]]:
    """Each member's last metrics from a population result (packed, nested or flattened)."""
    nested = result.get(MEMBERS)
    if isinstance(nested, str):
        nested = json.loads(nested)
    if isinstance(nested, dict):
        return {int(k): v for k, v in nested.items()}
    out: dict[int, dict[str, Any]] = {}
    for key, value in result.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == MEMBERS and parts[1].isdigit():
            out.setdefault(int(parts[1]), {})[parts[2]] = value
    return out


def member_units(spec: SearchSpec, trial: Any, result: dict | None
                 ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(record id, complete params, result) per member, or the trial itself alone."""
    configs = trial.config.get(MEMBERS) if isinstance(trial.config, dict) else None
    if not configs:
        yield trial.trial_id, trial_params(spec, trial.config), result or {}
        return
    finals = member_results(result or {})
    for index, config in enumerate(configs):
        yield member_id(trial.trial_id, index), trial_params(spec, config), finals.get(index, {})


class MemberRungs:
    """Successive halving over the members of one population.

    At each rung (grace_period · reduction_factor^k epochs) a member is stopped
    unless it is in the best 1/reduction_factor of the members that reached it.
    """

    def __init__(self, spec: SearchSpec) -> None:
        self.enabled = spec.scheduler in ("asha", "hyperband")
        self.metric, self.mode = spec.objective.objectives()[0]
        self.factor = spec.search.reduction_factor
        self.rungs: set[int] = set()
        epoch = spec.grace_epochs
        while epoch < spec.train.epochs:
            self.rungs.add(int(epoch))
            epoch = math.ceil(epoch * self.factor)

    def losers(self, epoch: int, metrics: dict[int, dict[str, float]]) -> list[int]:
        if not self.enabled or epoch not in self.rungs or len(metrics) < 2:
            return []
        keep = max(1, math.floor(len(metrics) / self.factor))
        ranked = sorted(metrics, key=lambda i: metrics[i].get(self.metric, math.nan),
                        reverse=self.mode == "max")
        return ranked[keep:]


def train_population(config: dict[str, Any], spec_json: dict[str, Any],
                     checkpoint_interval_s: float = 0.0) -> None:
    import ray
    from ray import tune

    from workers.training import build_setup
    from workers.training.population import PopulationTrainer
    from workers.tune.trainable import CheckpointPolicy, placement, prepare_worker

    spec = SearchSpec.model_validate(spec_json)
    if spec.search.share_prefixes:
        from workers.tune.shared_prefix import train_shared_population

        train_shared_population(config, spec_json)
        return
    setups = [build_setup(spec, trial_params(spec, c)) for c in config[MEMBERS]]
    device = prepare_worker(spec)
    population = PopulationTrainer(setups, device)
    last: dict[int, dict[str, float]] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            population.restore(Path(directory))
            saved = json.loads((Path(directory) / "members.json").read_text())
            last = {int(k): v for k, v in saved.items()}
    rungs = MemberRungs(spec)
    where = placement(ray)
    policy = CheckpointPolicy(spec, checkpoint_interval_s)
    metric, mode = spec.objective.objectives()[0]
    while not population.done and population.active:
        active = population.active
        fresh = dict(zip(active, population.train_epoch()))
        last.update(fresh)
        for index in rungs.losers(population.epoch, fresh):
            population.stop(index)
        values = [m[metric] for m in last.values() if metric in m]
        best = (max if mode == "max" else min)(values) if values else math.nan
        result = {metric: best, "epoch": population.epoch, **where,
                  MEMBERS: pack_members(last),
                  "members_active": len(population.active)}
        if not policy.due(final=population.done or not population.active):
            tune.report(result)
            continue
        with tempfile.TemporaryDirectory() as directory:
            population.save(Path(directory))
            (Path(directory) / "members.json").write_text(json.dumps(last))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(directory))
