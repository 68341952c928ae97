"""Spec -> Optuna/Tune objects, exercised with Optuna directly (no Ray cluster)."""

from __future__ import annotations

import json

import optuna
import pytest

from search_spaces import catalog, load_spec
from workers.tune.algorithms import ALGORITHMS, SAMPLERS
from workers.tune.schedulers import SCHEDULERS, build_scheduler
from workers.tune.space import define_by_run, trial_params

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec_of(**patch):
    return load_spec(json.dumps({"name": "t", "task": "digits", **patch}))


def sample(spec, n: int, algorithm: str | None = None) -> list[dict]:
    """Run the define-by-run space through the spec's sampler, n trials."""
    sampler = SAMPLERS[algorithm or spec.search.algorithm](spec)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    define = define_by_run(spec, conditional=spec.search.algorithm != "grid")
    configs = []
    for _ in range(n):
        trial = study.ask()
        define(trial)
        configs.append(dict(trial.params))
        study.tell(trial, float(sum(hash(str(v)) % 7 for v in trial.params.values())))
    return configs


def test_registries_match_the_catalogue() -> None:
    assert set(ALGORITHMS) == set(catalog.ALGORITHMS)
    assert set(SCHEDULERS) == set(catalog.SCHEDULERS)


@pytest.mark.parametrize("algorithm", ["tpe", "random", "cmaes", "qmc", "gp", "nsga2"])
def test_seed_makes_sampled_configurations_repeatable(algorithm: str) -> None:
    spec = spec_of(space={"reg_lambda": {"low": 1e-6, "high": 1e-2, "log": True},
                          "focal_gamma": {"low": 0.0, "high": 5.0},
                          "reg_start_step": {"low": 0, "high": 100, "type": "int"}},
                   objective={"loss": "focal"},
                   search={"algorithm": algorithm, "seed": 3, "num_trials": 6})
    first, second = sample(spec, 6), sample(spec, 6)
    assert first == second
    assert len({json.dumps(c, sort_keys=True) for c in first}) > 1
    for config in first:
        assert 1e-6 <= config["reg_lambda"] <= 1e-2
        assert 0 <= config["reg_start_step"] <= 100


def test_grid_visits_every_point_once() -> None:
    spec = spec_of(space={"l1_ratio": {"choices": [0.0, 0.5, 1.0]},
                          "reg_lambda": {"choices": [0.0, 1e-3]}},
                   search={"algorithm": "grid", "num_trials": 6})
    points = {(c["l1_ratio"], c["reg_lambda"]) for c in sample(spec, 6)}
    assert points == {(a, b) for a in (0.0, 0.5, 1.0) for b in (0.0, 1e-3)}


def test_include_zero_produces_exact_zero() -> None:
    spec = spec_of(space={"reg_lambda": {"low": 1e-6, "high": 1e-1, "log": True,
                                         "include_zero": True}},
                   search={"algorithm": "random", "seed": 0, "num_trials": 40})
    values = [trial_params(spec, c)["reg_lambda"] for c in sample(spec, 40)]
    assert 0.0 in values
    assert all(v == 0.0 or 1e-6 <= v <= 1e-1 for v in values)
    assert any(v > 0 for v in values)


def test_conditional_space_never_gives_gamma_to_cross_entropy() -> None:
    spec = spec_of(space={"loss": {"choices": ["cross_entropy", "focal"]},
                          "focal_gamma": {"low": 0.5, "high": 5.0}},
                   search={"algorithm": "random", "seed": 1, "num_trials": 30})
    configs = sample(spec, 30)
    assert {c["loss"] for c in configs} == {"cross_entropy", "focal"}
    for config in configs:
        assert ("focal_gamma" in config) == (config["loss"] == "focal")


@pytest.mark.parametrize("name", list(catalog.SCHEDULERS))
def test_every_scheduler_builds(name: str) -> None:
    scheduler = build_scheduler(spec_of(search={"scheduler": name}))
    assert scheduler is not None


@pytest.mark.parametrize("name", ["asha", "median"])
def test_schedulers_take_the_specs_grace_in_epochs(name: str) -> None:
    default = build_scheduler(spec_of(train={"epochs": 12}, search={"scheduler": name}))
    explicit = build_scheduler(spec_of(train={"epochs": 12},
                                       search={"scheduler": name, "grace_period": 2}))
    def grace(scheduler) -> int:  # ASHA keeps it as its first rung's milestone
        if name == "asha":
            return min(milestone for milestone, _ in scheduler._brackets[0]._rungs)
        return scheduler._grace_period

    assert grace(default) == 4  # ceil(12 / 3)
    assert grace(explicit) == 2


def test_population_rungs_start_at_the_grace() -> None:
    from workers.tune.population import MemberRungs

    rungs = MemberRungs(spec_of(train={"epochs": 12}, search={"population": 4}))
    assert sorted(rungs.rungs) == [4, 8]
