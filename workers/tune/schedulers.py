"""Trial schedulers (early stopping): a name -> a small factory.

All count time in epochs (Tune's ``training_iteration``: one report per epoch),
so the spec's grace period (``SearchSpec.grace_epochs``) means epochs everywhere. Metric and mode are
given to the scheduler itself (not to TuneConfig), because a multi-objective
search has no single TuneConfig metric: early stopping then follows the first
objective.
"""

from __future__ import annotations

from typing import Any, Callable

from search_spaces import SearchSpec

TIME_ATTR = "training_iteration"
#: Schedulers that pause trials and resume them from their latest checkpoint, so
#: their trials must checkpoint every epoch (workers.tune.trainable.CheckpointPolicy).
PAUSING: frozenset[str] = frozenset({"hyperband"})


def _target(spec: SearchSpec) -> dict[str, str]:
    metric, mode = spec.objective.objectives()[0]
    return {"metric": metric, "mode": mode}


def _asha(spec: SearchSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    max_t = spec.train.epochs
    return ASHAScheduler(time_attr=TIME_ATTR, max_t=max_t,
                         grace_period=spec.grace_epochs,
                         reduction_factor=spec.search.reduction_factor, **_target(spec))


def _hyperband(spec: SearchSpec) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr=TIME_ATTR, max_t=spec.train.epochs,
                              reduction_factor=spec.search.reduction_factor, **_target(spec))


def _median(spec: SearchSpec) -> Any:
    from ray.tune.schedulers import MedianStoppingRule

    return MedianStoppingRule(time_attr=TIME_ATTR, grace_period=spec.grace_epochs,
                              min_samples_required=3, **_target(spec))


def _none(spec: SearchSpec) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS: dict[str, Callable[[SearchSpec], Any]] = {
    "asha": _asha, "hyperband": _hyperband, "median": _median, "none": _none,
}


def build_scheduler(spec: SearchSpec) -> Any:
    return SCHEDULERS[spec.scheduler](spec)
