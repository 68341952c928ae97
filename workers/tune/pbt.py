"""Population-based training (PBT, PB2): hyperparameters that change during training.

These schedule trials themselves: every ``perturbation_interval`` epochs a weak
trial copies a strong one's checkpoint and perturbs its hyperparameters. Because
the trainer counts optimizer steps globally, a perturbed ``reg_start_step`` below
the current step switches regularization on at that moment, which is how PBT can
discover *when* regularization should start.
"""

from __future__ import annotations

from functools import partial
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


def within_space(spec: SearchSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A perturbed config brought back into the spec's ranges.

    PBT's explore step multiplies a continuous value by 0.8 or 1.2 without looking
    at its domain, so l1_ratio = 0.91 can become 1.09: a value the trial refuses
    (and the user never allowed). Clip to [low, high]; int parameters stay ints.
    """
    for name, param in spec.searched().items():
        if isinstance(param, Range) and isinstance(config.get(name), (int, float)):
            value = min(max(config[name], param.low), param.high)
            config[name] = int(round(value)) if param.type == "int" else float(value)
    return config


def pbt_scheduler(spec: SearchSpec) -> Any:
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(
        time_attr=TIME_ATTR, perturbation_interval=spec.search.perturbation_interval,
        hyperparam_mutations={name: tune_domain(p) for name, p in spec.searched().items()},
        quantile_fraction=0.25, resample_probability=0.25,
        custom_explore_fn=partial(within_space, spec), **_target(spec))


def pb2_scheduler(spec: SearchSpec) -> Any:
    from ray.tune.schedulers.pb2 import PB2

    bounds = {name: [p.low, p.high] for name, p in spec.searched().items()
              if isinstance(p, Range)}
    return PB2(time_attr=TIME_ATTR, perturbation_interval=spec.search.perturbation_interval,
               hyperparam_bounds=bounds, quantile_fraction=0.25, **_target(spec))
