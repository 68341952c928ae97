"""The spec model: every bad input is refused naming its field; good specs load."""

from __future__ import annotations

import json

import pytest

from search_spaces import (InvalidSpec, SearchSpec, builtin_spec_files, load_spec,
                           load_spec_file)
from search_spaces.params import PARAMS

BASE = {"name": "t", "task": "digits"}


def errors(body: dict | str, ctype: str = "application/json") -> dict[str, str]:
    text = body if isinstance(body, str) else json.dumps(body)
    with pytest.raises(InvalidSpec) as info:
        load_spec(text, ctype)
    return {e.field: e.message for e in info.value.errors}


@pytest.mark.parametrize("patch, field", [
    ({"bogus": 1}, "bogus"),
    ({"space": {"reg_lambda": {"low": 1.0, "high": 0.5}}}, "space.reg_lambda.low"),
    ({"space": {"reg_lambda": {"low": 0.0, "high": 1.0, "log": True}}}, "space.reg_lambda.low"),
    ({"space": {"reg_lambda": -0.1}}, "space.reg_lambda"),
    ({"space": {"focal_gamma": {"low": -1.0, "high": 2.0}}}, "space.focal_gamma"),
    ({"space": {"epsilon": 0}}, "space.huber_delta"),
    ({"space": {"l1_ratio": 1.5}}, "space.l1_ratio"),
    ({"space": {"not_a_param": 1}}, "space.not_a_param"),
    ({"space": {"reg_lambda": {"low": 0.1, "high": 1, "bogus": 1}}}, "space.reg_lambda.bogus"),
    ({"space": {"reg_start_step": {"low": 0.5, "high": 3.5}}}, "space.reg_start_step.type"),
    ({"task": "no-such-task"}, "task"),
    ({"objective": {"loss": "hinge"}}, "objective.loss"),
    ({"objective": {"metric": "val_auc"}}, "objective.metric"),
    ({"objective": {"metric": "val_rmse"}}, "objective.metric"),  # regression metric, digits
    ({"search": {"num_trials": 0}}, "search.num_trials"),
    ({"search": {"algorithm": "bayes-magic"}}, "search.algorithm"),
    ({"search": {"scheduler": "pbt2"}}, "search.scheduler"),
    ({"resources": {"gpu": -1}}, "resources.gpu"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"name": "has spaces"}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"space": {"reg_start_step": 5000}}, "space.reg_start_step"),
    ({"space": {"reg_start_step": {"low": 4000, "high": 5000, "type": "int"}}},
     "space.reg_start_step"),
    ({"objective": {"metric": "val_loss"}, "space": {"focal_gamma": {"low": 0, "high": 2}}},
     "objective.metric"),
    ({"search": {"algorithm": "grid"}, "space": {"reg_lambda": {"low": 0.1, "high": 1}}},
     "space.reg_lambda"),
    ({"model": {"name": "cnn"}, "task": "diabetes", "objective": {"loss": "mse",
                                                                 "metric": "val_rmse"}},
     "model.name"),
])
def test_bad_input_names_the_field(patch: dict, field: str) -> None:
    found = errors({**BASE, **patch})
    assert field in found, found
    assert found[field]


def test_unparseable_bodies_blame_the_body() -> None:
    assert "body" in errors("{not json")
    assert "body" in errors("a: [unclosed", "application/yaml")
    assert "body" in errors("[1, 2]")


def test_yaml_is_loaded_safely() -> None:
    hostile = "!!python/object/apply:os.system ['echo pwned']\n"
    assert "body" in errors(hostile, "application/yaml")


def test_oversized_body_refused() -> None:
    big = json.dumps({**BASE, "task_options": {"x": "y" * 70_000}})
    assert "body" in errors(big)


def test_alias_epsilon_is_huber_delta() -> None:
    spec = load_spec(json.dumps({**BASE, "objective": {"loss": "smooth_l1"},
                                 "space": {"epsilon": {"low": 0.1, "high": 2.0}}}))
    assert "huber_delta" in spec.space and "epsilon" not in spec.space


def test_reachable_start_range_with_unreachable_top_is_accepted() -> None:
    # Issue 2's own example: 10 epochs x 23 steps = 230 steps, high 400: the top of the
    # range is a "never regularize" candidate, not an error.
    spec = load_spec(json.dumps({**BASE, "space": {"reg_start_step": {"low": 0, "high": 400,
                                                                      "type": "int"}}}))
    assert spec.space["reg_start_step"].high == 400


def test_resolve_params_layers_defaults_train_constants_and_sampled() -> None:
    spec = load_spec(json.dumps({**BASE, "train": {"lr": 0.05, "batch_size": 32},
                                 "space": {"l1_ratio": 0.5, "reg_lambda": {"low": 1e-4,
                                                                           "high": 1e-2}}}))
    params = spec.resolve_params({"reg_lambda": 0.003})
    assert set(params) == set(PARAMS)
    assert params["lr"] == 0.05 and params["batch_size"] == 32
    assert params["l1_ratio"] == 0.5 and params["reg_lambda"] == 0.003
    assert params["focal_gamma"] == PARAMS["focal_gamma"].default
    assert isinstance(params["reg_start_step"], int)


def test_planned_trials_caps_grid_at_its_size() -> None:
    spec = load_spec(json.dumps({**BASE, "search": {"algorithm": "grid", "num_trials": 100},
                                 "space": {"l1_ratio": {"choices": [0, 0.5, 1]},
                                           "reg_lambda": {"choices": [0, 1e-3]}}}))
    assert spec.planned_trials() == 6
    tpe = load_spec(json.dumps({**BASE, "search": {"num_trials": 7}}))
    assert tpe.planned_trials() == 7


@pytest.mark.parametrize("epochs, grace, expected", [
    (10, None, 4), (16, None, 6), (3, None, 1), (1, None, 1),  # a third, rounded up
    (16, 1, 1), (16, 5, 5), (4, 9, 4),  # the spec's own, capped at the epochs
])
def test_grace_epochs_default_is_a_third_of_the_run(epochs: int, grace: int | None,
                                                    expected: int) -> None:
    search = {} if grace is None else {"grace_period": grace}
    spec = load_spec(json.dumps({**BASE, "train": {"epochs": epochs}, "search": search}))
    assert spec.grace_epochs == expected


def test_grace_period_below_one_names_the_field() -> None:
    assert "search.grace_period" in errors({**BASE, "search": {"grace_period": 0}})


def test_spec_round_trips_through_json() -> None:
    spec = load_spec_file("search_spaces/demo.yaml")
    again = SearchSpec.model_validate(json.loads(spec.model_dump_json()))
    assert again == spec


def test_every_ready_made_spec_validates() -> None:
    files = builtin_spec_files()
    assert any(f.name == "demo.yaml" for f in files)
    for path in files:
        spec = load_spec_file(path)
        assert spec.name and spec.search.num_trials >= 1, path


def test_multi_objective_spec_round_trips_and_conflicts_are_refused() -> None:
    body = {**BASE, "search": {"algorithm": "nsga2"},
            "objective": {"metrics": [{"metric": "val_accuracy", "mode": "max"},
                                      {"metric": "weight_l1", "mode": "min"}]}}
    spec = load_spec(json.dumps(body))
    assert spec.objective.multi and spec.objective.metric == "val_accuracy"
    assert SearchSpec.model_validate(json.loads(spec.model_dump_json())) == spec
    assert spec.scheduler == "none"  # nothing is stopped early on one of several goals
    conflict = {**body, "objective": {**body["objective"], "metric": "val_f1"}}
    assert "objective.metrics" in errors(conflict)
    cmaes = {**body, "search": {"algorithm": "cmaes"}}
    assert "search.algorithm" in errors(cmaes)


@pytest.mark.parametrize("patch, field", [
    ({"search": {"algorithm": "pbt", "scheduler": "asha"}}, "search.scheduler"),
    ({"search": {"algorithm": "pb2"}, "space": {"l1_ratio": {"choices": [0, 1]}}},
     "space.l1_ratio"),
    ({"search": {"algorithm": "pbt"},
      "space": {"reg_lambda": {"low": 1e-5, "high": 1e-1, "log": True, "include_zero": True}}},
     "space.reg_lambda.include_zero"),
    ({"search": {"warm_start": {"job": "not-a-job"}}}, "search.warm_start.job"),
    ({"objective": {"select": "one_standard_error"}, "train": {"epochs": 1}},
     "objective.select"),
    ({"objective": {"loss": "mse", "metric": "val_loss"},
      "space": {"smooth_l1_weight": 1.0, "reg_start_step": {"low": 0, "high": 50,
                                                            "type": "int"}}},
     "objective.metric"),
    ({"search": {"share_prefixes": True}}, "search.share_prefixes"),  # no population
    ({"search": {"population": 4, "exact_prefixes": True}},  # says how, but nothing shared
     "search.exact_prefixes"),
    ({"search": {"population": 4, "share_prefixes": True}},  # start step 0: nothing shared
     "search.share_prefixes"),
    ({"search": {"population": 4, "share_prefixes": True},
      "space": {"reg_start_step": {"choices": [0]}}}, "search.share_prefixes"),
])
def test_search_depth_rules_name_the_field(patch: dict, field: str) -> None:
    body = {**BASE, "space": {"reg_lambda": {"low": 1e-5, "high": 1e-1, "log": True}}, **patch}
    assert field in errors(body)


def test_share_prefixes_with_a_population_and_a_later_start_is_accepted() -> None:
    body = {**BASE, "search": {"population": 4, "share_prefixes": True},
            "space": {"reg_start_step": {"low": 0, "high": 40, "type": "int"}}}
    assert load_spec(json.dumps(body)).search.share_prefixes
    constant = {**body, "space": {"reg_start_step": 20,
                                  "reg_lambda": {"choices": [1e-4, 1e-3]}}}
    assert load_spec(json.dumps(constant)).search.share_prefixes
    message = errors({**body, "search": {"share_prefixes": True}})["search.share_prefixes"]
    assert "search.population" in message
