"""Population-based training (PBT, PB2): hyperparameters that change during training.

These schedule trials themselves: every ``perturbation_interval`` epochs a weak
trial copies a strong one's checkpoint and perturbs its hyperparameters. Because
the trainer counts optimizer steps globally, a perturbed ``reg_start_step`` below
the current step switches regularization on at that moment, which is how PBT can
discover *when* regularization should start.
"""

from __future__ import annotations

from typing import Any

from search_spaces import Choices, Range, SearchSpec
from workers.tune.schedulers import TIME_ATTR, _target


def tune_domain(param: Range | Choices) -> Any:
    """A spec parameter as a Ray Tune sampling domain (for the initial population)."""
    from ray import tune

    if isinstance(param, Choices):
        return tune.choice(list(param.choices))
    if param.type == "int":
        return (tune.lograndint if param.log else tune.randint)(int(param.low), int(param.high) + 1)
    return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)


def param_space(spec: SearchSpec) -> dict[str, Any]:
    space: dict[str, Any] = {name: tune_domain(p) for name, p in spec.searched().items()}
    space.update(spec.constants())
    return space


def pbt_scheduler(spec: SearchSpec) -> Any:
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(
        time_attr=TIME_ATTR, perturbation_interval=spec.search.perturbation_interval,
        hyperparam_mutations={name: tune_domain(p) for name, p in spec.searched().items()},
        quantile_fraction=0.25, resample_probability=0.25, **_target(spec))


def pb2_scheduler(spec: SearchSpec) -> Any:
    from ray.tune.schedulers.pb2 import PB2

    bounds = {name: [p.low, p.high] for name, p in spec.searched().items()
              if isinstance(p, Range)}
    return PB2(time_attr=TIME_ATTR, perturbation_interval=spec.search.perturbation_interval,
               hyperparam_bounds=bounds, quantile_fraction=0.25, **_target(spec))
