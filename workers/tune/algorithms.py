"""Search algorithms: a name -> a small factory building an Optuna sampler.

Every algorithm runs through Ray Tune's ``OptunaSearch`` with a define-by-run
space (``workers.tune.space``), so conditional parameters and ``include_zero``
work the same for all of them; what differs is only the sampler. Adding one is
one entry here plus its name in ``search_spaces.catalog.ALGORITHMS``.
"""

from __future__ import annotations

from typing import Callable

import warnings

import optuna

from search_spaces import SearchSpec
from workers.tune.space import define_by_run

SamplerFactory = Callable[[SearchSpec], optuna.samplers.BaseSampler]


def _tpe(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    # Few startup trials: regtune searches are small, and TPE with its default 10
    # random startup trials would be plain random search for most jobs.
    startup = max(2, min(10, spec.search.num_trials // 4))
    # multivariate/group/constant_liar are marked experimental in Optuna; they are
    # what makes TPE model parameter interactions (λ with l1_ratio) and spread out
    # concurrent trials, so they are used on purpose.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup,
                                      multivariate=True, group=True,
                                      constant_liar=True)  # concurrent trials spread out


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, minus its ``study.stop()`` after the last point.

    That call is only legal inside ``study.optimize``; Ray's OptunaSearch drives
    Optuna through ask/tell, where it raises. The grid ends by count instead:
    Tune runs exactly ``planned_trials()`` samples, the grid's size.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        return None


ALGORITHMS: dict[str, SamplerFactory] = {
    "tpe": _tpe,
    "random": lambda s: optuna.samplers.RandomSampler(seed=s.search.seed),
    "grid": lambda s: AskTellGridSampler(s.grid_axes(), seed=s.search.seed),
    "cmaes": lambda s: optuna.samplers.CmaEsSampler(seed=s.search.seed, warn_independent_sampling=False),
    "qmc": lambda s: optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=s.search.seed,
                                                warn_independent_sampling=False),
    "gp": lambda s: optuna.samplers.GPSampler(seed=s.search.seed),
}


def effective_num_trials(spec: SearchSpec) -> int:
    """A grid has a fixed number of points; other algorithms run num_trials."""
    return spec.planned_trials()


def build_searcher(spec: SearchSpec):
    """OptunaSearch wrapped in a ConcurrencyLimiter honouring max_concurrent."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sampler = ALGORITHMS[spec.search.algorithm](spec)
    searcher = OptunaSearch(space=define_by_run(spec, conditional=spec.search.algorithm != "grid"),
                            metric=spec.objective.metric, mode=spec.objective.direction,
                            sampler=sampler, seed=spec.search.seed)
    limit = min(spec.search.max_concurrent, effective_num_trials(spec))
    return ConcurrencyLimiter(searcher, max_concurrent=limit)
