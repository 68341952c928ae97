"""The answer rules: best with earliest ties, the 1-SE rule, the Pareto set."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from search_spaces import load_spec
from search_spaces.selection import (best_trial, dominates, pareto_front, select,
                                     standard_error)


@dataclass
class T:
    index: int
    objective: float | None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trial_id: str = ""
    mlflow_run_id: str | None = None

    def __post_init__(self) -> None:
        self.trial_id = self.trial_id or f"t{self.index}"


def spec(**objective: Any):
    return load_spec(json.dumps({"name": "s", "task": "digits", "objective": objective,
                                 "search": {"algorithm": "random"}}))


def test_best_ties_go_to_the_earliest_and_none_is_skipped() -> None:
    trials = [T(2, 0.9), T(0, None), T(1, 0.9), T(3, 0.5)]
    assert best_trial(trials, "max").index == 1
    assert best_trial(trials, "min").index == 3
    assert best_trial([T(0, None)], "max") is None


def test_standard_error_of_recent_epochs() -> None:
    assert standard_error([0.5]) == 0.0
    assert standard_error([9.0, 1.0, 2.0, 3.0]) == standard_error([1.0, 2.0, 3.0])
    assert abs(standard_error([1.0, 2.0, 3.0]) - (1.0 / 3 ** 0.5)) < 1e-12


def test_one_standard_error_prefers_stronger_regularization_within_the_band() -> None:
    trials = [T(0, 0.95, {"reg_lambda": 1e-4}, {"objective_se": 0.02}),
              T(1, 0.94, {"reg_lambda": 1e-2}, {"objective_se": 0.01}),
              T(2, 0.90, {"reg_lambda": 1e-1}, {"objective_se": 0.01})]
    answer = select(spec(metric="val_accuracy", select="one_standard_error"), trials)
    assert answer["trial_id"] == "t1" and answer["best_trial_id"] == "t0"
    assert answer["standard_error"] == 0.02


def test_pareto_front_keeps_exactly_the_non_dominated() -> None:
    objectives = [("val_accuracy", "max"), ("weight_l1", "min")]
    trials = [T(0, 0, metrics={"val_accuracy": 0.9, "weight_l1": 10}),
              T(1, 0, metrics={"val_accuracy": 0.8, "weight_l1": 5}),
              T(2, 0, metrics={"val_accuracy": 0.7, "weight_l1": 6}),   # dominated by 1
              T(3, 0, metrics={"val_accuracy": 0.9, "weight_l1": 12})]  # dominated by 0
    assert [t.index for t in pareto_front(trials, objectives)] == [0, 1]
    answer = select(spec(metrics=[{"metric": "val_accuracy"}, {"metric": "weight_l1"}]), trials)
    assert answer["policy"] == "pareto" and answer["trial_id"] == "t0"
    assert [p["trial_id"] for p in answer["pareto"]] == ["t0", "t1"]


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=20))
def test_front_members_are_never_dominated(points: list[tuple[float, float]]) -> None:
    objectives = [("val_accuracy", "max"), ("weight_l1", "min")]
    trials = [T(i, 0, metrics={"val_accuracy": a, "weight_l1": w})
              for i, (a, w) in enumerate(points)]
    front = pareto_front(trials, objectives)
    assert front
    modes = ["max", "min"]
    for member in front:
        mv = [member.metrics["val_accuracy"], member.metrics["weight_l1"]]
        for other in trials:
            ov = [other.metrics["val_accuracy"], other.metrics["weight_l1"]]
            assert not dominates(ov, mv, modes)
