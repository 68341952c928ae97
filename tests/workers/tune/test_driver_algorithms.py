"""Every algorithm and scheduler on a tiny task, through the real driver and Ray Tune."""

from __future__ import annotations

import pytest

from search_spaces import catalog
from tests.workers.tune.conftest import tiny

ONE_OBJECTIVE = [a for a in catalog.ALGORITHMS if a not in ("nsga2",)]


@pytest.mark.parametrize("algorithm", ONE_OBJECTIVE)
def test_each_algorithm_runs_a_tiny_search(harness, algorithm: str) -> None:
    spec = tiny(f"alg-{algorithm}", algorithm=algorithm)
    if algorithm == "grid":
        spec["space"] = {"reg_lambda": {"choices": [0.0, 1e-3]}, "l1_ratio": {"choices": [0, 1]}}
        spec["search"]["num_trials"] = 10  # capped at the grid's 4 points
    if algorithm in catalog.POPULATION_ALGORITHMS:
        spec["train"]["epochs"] = 4
        spec["search"].update(num_trials=4, max_concurrent=2, perturbation_interval=1)
    job = harness.run(harness.submit(spec))
    trials = harness.trials(job.id)
    assert job.status == "succeeded"
    assert len(trials) == job.num_trials == (4 if algorithm in ("grid", "pbt", "pb2") else 3)
    assert all(t.status in ("completed", "stopped") for t in trials)
    assert job.best and job.best["policy"] == "best"
    assert job.best["metric"] == max(t.objective for t in trials)
    if algorithm == "grid":
        points = {(t.config["reg_lambda"], t.config["l1_ratio"]) for t in trials}
        assert points == {(0.0, 0.0), (0.0, 1.0), (1e-3, 0.0), (1e-3, 1.0)}


@pytest.mark.parametrize("scheduler", list(catalog.SCHEDULERS))
def test_each_scheduler(harness, scheduler: str) -> None:
    spec = tiny(f"sched-{scheduler}", algorithm="random", scheduler=scheduler,
                num_trials=5, max_concurrent=1, grace_period=1, reduction_factor=3)
    spec["train"]["epochs"] = 4
    spec["space"]["lr"] = {"low": 1e-3, "high": 0.5, "log": True}  # very unequal trials
    job = harness.run(harness.submit(spec))
    trials = harness.trials(job.id)
    assert job.status == "succeeded" and len(trials) == 5
    stopped = [t for t in trials if t.status == "stopped"]
    if scheduler == "none":
        assert not stopped and all(t.iteration == 4 for t in trials)
    if scheduler == "asha":  # sequential trials: a later, worse trial is cut at a rung
        assert stopped and all(t.iteration < 4 for t in stopped)


def test_multi_objective_returns_the_pareto_set_and_logs_figures(harness) -> None:
    spec = tiny("pareto", algorithm="nsga2", num_trials=6)
    spec["objective"] = {"metrics": [{"metric": "val_accuracy", "mode": "max"},
                                     {"metric": "weight_l1", "mode": "min"}]}
    job = harness.run(harness.submit(spec))
    trials = harness.trials(job.id)
    front = job.best["pareto"]
    assert job.best["policy"] == "pareto" and front
    ids = {p["trial_id"] for p in front}
    for trial in trials:  # nothing outside the front dominates a member
        for member in (t for t in trials if t.trial_id in ids):
            dominated = (trial.metrics["val_accuracy"] >= member.metrics["val_accuracy"]
                         and trial.metrics["weight_l1"] <= member.metrics["weight_l1"]
                         and (trial.metrics["val_accuracy"] > member.metrics["val_accuracy"]
                              or trial.metrics["weight_l1"] < member.metrics["weight_l1"]))
            assert not dominated
    artifacts = {a.path for a in harness.mlflow.list_artifacts(job.mlflow_parent_run_id,
                                                               "figures")}
    assert {"figures/pareto_front.png", "figures/pareto_front.html",
            "figures/trials.csv"} <= artifacts


def test_figures_and_trials_table_on_the_parent_run(harness) -> None:
    job = harness.run(harness.submit(tiny("figs", algorithm="random", num_trials=4)))
    artifacts = {a.path for a in harness.mlflow.list_artifacts(job.mlflow_parent_run_id,
                                                               "figures")}
    for name in ("optimization_history", "parallel_coordinate", "param_importances"):
        assert {f"figures/{name}.png", f"figures/{name}.html"} <= artifacts, artifacts
    table = harness.mlflow.download_artifacts(job.mlflow_parent_run_id, "figures/trials.csv")
    lines = open(table).read().strip().splitlines()
    assert len(lines) == 1 + 4 and lines[0].startswith("index,trial_id,status")
