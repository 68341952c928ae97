"""search.population: K trials per batched model, each still its own trial everywhere."""

from __future__ import annotations

from tests.workers.tune.conftest import tiny


def test_population_members_are_trials_with_their_own_runs_and_stops(harness) -> None:
    spec = tiny("population", algorithm="random", num_trials=6, max_concurrent=1,
                population=4, scheduler="asha", grace_period=1, reduction_factor=2)
    spec["train"]["epochs"] = 4
    spec["space"]["lr"] = {"low": 1e-3, "high": 0.5, "log": True}  # unequal members
    job = harness.run(harness.submit(spec))
    trials = harness.trials(job.id)
    assert job.status == "succeeded"
    assert len(trials) == 6 and len({t.trial_id for t in trials}) == 6
    assert all("-m" in t.trial_id for t in trials)
    # Members stop on their own: within a population of 4, halving keeps 2 past epoch 1.
    stopped = [t for t in trials if t.status == "stopped"]
    completed = [t for t in trials if t.status == "completed"]
    assert stopped and completed and all(t.iteration == 4 for t in completed)
    assert all(t.iteration < 4 for t in stopped)
    # Each member has its own MLflow child run with its own configuration and history.
    runs = harness.mlflow.search_runs(
        [job.mlflow_experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{job.mlflow_parent_run_id}'")
    by_id = {r.data.tags["regtune.trial_id"]: r for r in runs}
    assert set(by_id) == {t.trial_id for t in trials}
    for trial in trials:
        run = by_id[trial.trial_id]
        assert float(run.data.params["lr"]) == trial.config["lr"]
        history = harness.mlflow.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, trial.iteration + 1))
        assert run.info.status == "FINISHED"
    assert len({t.config["lr"] for t in trials}) == 6
    assert job.best["metric"] == max(t.objective for t in trials)


def test_population_member_matches_the_same_trial_trained_alone(harness) -> None:
    from search_spaces import validate_spec
    from workers.training import Trainer, build_setup

    spec = tiny("population-equal", algorithm="random", num_trials=2, population=2,
                scheduler="none")
    job = harness.run(harness.submit(spec))
    parsed = validate_spec(spec)
    for trial in harness.trials(job.id):
        alone = Trainer(build_setup(parsed, trial.config))
        metrics = [alone.train_epoch() for _ in range(parsed.train.epochs)][-1]
        assert abs(metrics["val_accuracy"] - trial.metrics["val_accuracy"]) < 1e-6
        assert abs(metrics["val_loss"] - trial.metrics["val_loss"]) < 1e-4 * abs(metrics["val_loss"])
