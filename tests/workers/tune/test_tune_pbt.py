"""PBT's explore step keeps perturbed hyperparameters inside the spec's ranges."""

from __future__ import annotations

import random

from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny
from workers.tune.pbt import pbt_scheduler, within_space


def spec():
    s = tiny("pbt-explore", algorithm="pbt", perturbation_interval=1)
    s["space"]["reg_start_step"] = {"low": 0, "high": 40, "type": "int"}
    return validate_spec(s)


def test_within_space_clips_to_the_ranges_and_keeps_ints() -> None:
    out = within_space(spec(), {"l1_ratio": 1.0953, "reg_lambda": 1e-9, "reg_start_step": 47.6,
                                "lr": 0.2})
    assert out["l1_ratio"] == 1.0 and out["reg_lambda"] == 1e-5
    assert out["reg_start_step"] == 40 and isinstance(out["reg_start_step"], int)
    assert out["lr"] == 0.2  # a constant is left alone


def test_every_explored_config_stays_in_the_ranges() -> None:
    """Ray's own explore step with the scheduler's settings, from the edges of the ranges
    (where ×1.2 or ×0.8 leaves them): without the clip, l1_ratio reaches 1.2."""
    from ray.tune.schedulers.pbt import _explore

    parsed = spec()
    scheduler = pbt_scheduler(parsed)
    random.seed(0)
    for _ in range(200):
        config = {"l1_ratio": 1.0, "reg_lambda": 1e-2, "reg_start_step": 40}
        new, _ = _explore(config, scheduler._hyperparam_mutations, 0.25, (1.2, 0.8),
                          scheduler._custom_explore_fn)
        assert 0.0 <= new["l1_ratio"] <= 1.0
        assert 1e-5 <= new["reg_lambda"] <= 1e-2
        assert 0 <= new["reg_start_step"] <= 40 and isinstance(new["reg_start_step"], int)
