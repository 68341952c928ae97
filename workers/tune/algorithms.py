"""Search algorithms: a name -> a factory building the search plan for a spec.

Model-based and sampling algorithms run through Ray Tune's ``OptunaSearch`` with
a define-by-run space (``workers.tune.space``), so conditional parameters and
``include_zero`` behave the same for all of them; they differ only in the
Optuna sampler. PBT and PB2 instead sample an initial population from Tune
domains and bring their own scheduler. Adding an algorithm is one entry here
plus its name in ``search_spaces.catalog.ALGORITHMS``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

from search_spaces import SearchSpec
from workers.tune.space import define_by_run

SamplerFactory = Callable[[SearchSpec], optuna.samplers.BaseSampler]


@dataclass
class SearchPlan:
    """What Tune needs from an algorithm."""

    search_alg: Any
    scheduler: Any
    param_space: dict[str, Any] = field(default_factory=dict)


def _tpe(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    # Few startup trials: regtune searches are small, and TPE with its default 10
    # random startup trials would be plain random search for most jobs.
    startup = max(2, min(10, spec.search.num_trials // 4))
    # multivariate/group/constant_liar are marked experimental in Optuna; they are
    # what makes TPE model parameter interactions (λ with l1_ratio) and spread out
    # concurrent trials, so they are used on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup,
                                      multivariate=True, group=True, constant_liar=True)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, minus its ``study.stop()`` after the last point.

    That call is only legal inside ``study.optimize``; Ray's OptunaSearch drives
    Optuna through ask/tell, where it raises. The grid ends by count instead:
    Tune runs exactly ``planned_trials()`` samples, the grid's size.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        return None


SAMPLERS: dict[str, SamplerFactory] = {
    "tpe": _tpe,
    "random": lambda s: optuna.samplers.RandomSampler(seed=s.search.seed),
    "grid": lambda s: AskTellGridSampler(s.grid_axes(), seed=s.search.seed),
    "cmaes": lambda s: optuna.samplers.CmaEsSampler(seed=s.search.seed,
                                                    warn_independent_sampling=False),
    "qmc": lambda s: optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True,
                                                seed=s.search.seed,
                                                warn_independent_sampling=False),
    "gp": lambda s: optuna.samplers.GPSampler(seed=s.search.seed),
    "nsga2": lambda s: optuna.samplers.NSGAIISampler(
        seed=s.search.seed, population_size=max(4, min(50, s.search.num_trials // 4))),
}


def optuna_search(spec: SearchSpec, points: list[dict[str, Any]] | None = None,
                  known: list[tuple[dict, list[float]]] | None = None) -> Any:
    """OptunaSearch wrapped in a ConcurrencyLimiter honouring max_concurrent.

    ``points`` are configurations to try first (warm start); ``known`` are results
    already in hand (an extended job), told to the sampler and not re-run.
    """
    from ray.tune.search import ConcurrencyLimiter

    from workers.tune.history import SeededOptunaSearch

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    objectives = spec.objective.objectives()
    metric = [m for m, _ in objectives] if spec.objective.multi else objectives[0][0]
    mode = [d for _, d in objectives] if spec.objective.multi else objectives[0][1]
    searcher = SeededOptunaSearch(
        space=define_by_run(spec, conditional=spec.search.algorithm != "grid"), metric=metric,
        mode=mode, sampler=SAMPLERS[spec.search.algorithm](spec), seed=spec.search.seed,
        points_to_evaluate=points or None, spec=spec, known=known)
    if spec.search.population > 1:
        return searcher  # the population searcher asks for K at a time
    limit = min(spec.search.max_concurrent, spec.planned_trials())
    return ConcurrencyLimiter(searcher, max_concurrent=limit)


def _optuna_plan(spec: SearchSpec, points=None, known=None, total: int | None = None
                 ) -> SearchPlan:
    from workers.tune.schedulers import build_scheduler

    searcher = optuna_search(spec, points, known)
    if spec.search.population == 1:
        return SearchPlan(searcher, build_scheduler(spec))
    from ray.tune.schedulers import FIFOScheduler

    from workers.tune.population import PopulationSearcher

    # Members stop early inside their population; Tune only sees whole populations.
    population = PopulationSearcher(searcher, spec.search.population,
                                    total if total is not None else spec.planned_trials())
    return SearchPlan(population, FIFOScheduler())


def _population_plan(scheduler_factory: Callable[[SearchSpec], Any]):
    def plan(spec: SearchSpec, points=None, known=None, total=None) -> SearchPlan:
        from ray.tune.search import BasicVariantGenerator

        from workers.tune.pbt import param_space

        generator = BasicVariantGenerator(max_concurrent=spec.search.max_concurrent,
                                          random_state=spec.search.seed,
                                          points_to_evaluate=points or None)
        return SearchPlan(generator, scheduler_factory(spec), param_space(spec))

    return plan


def _pbt(spec: SearchSpec) -> Any:
    from workers.tune.pbt import pbt_scheduler

    return pbt_scheduler(spec)


def _pb2(spec: SearchSpec) -> Any:
    from workers.tune.pbt import pb2_scheduler

    return pb2_scheduler(spec)


ALGORITHMS: dict[str, Callable[..., SearchPlan]] = {
    **{name: _optuna_plan for name in SAMPLERS},
    "pbt": _population_plan(_pbt),
    "pb2": _population_plan(_pb2),
}


def build_plan(spec: SearchSpec, points: list[dict[str, Any]] | None = None,
               known: list[tuple[dict, list[float]]] | None = None,
               total: int | None = None) -> SearchPlan:
    """``total``: the trials this round still runs (all of them, unless extended)."""
    return ALGORITHMS[spec.search.algorithm](spec, points, known, total)
