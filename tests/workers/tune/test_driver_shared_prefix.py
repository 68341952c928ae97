"""search.share_prefixes through the real driver, Ray Tune, the job store and MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.tune.conftest import tiny


def _final_compute(results_path: str) -> list[dict]:
    """Each Tune trial's compute, from its last checkpoint's shared_prefix.json."""
    from workers.tune.shared_prefix import STATE_FILE, SharedProgress

    latest: dict[Path, Path] = {}
    for path in Path(results_path).rglob(STATE_FILE):
        trial_dir = path.parent.parent
        if trial_dir not in latest or path.parent.name > latest[trial_dir].parent.name:
            latest[trial_dir] = path
    out = []
    for path in latest.values():
        progress = SharedProgress.load(path.parent)
        out.append({**progress.compute, "independent": progress.independent_steps()})
    return out


def test_shared_prefix_members_are_trials_recorded_per_epoch_with_fewer_steps(harness) -> None:
    from search_spaces import validate_spec
    from workers.training import Trainer, build_setup

    spec = tiny("shared-prefixes", algorithm="grid", num_trials=8, max_concurrent=1,
                population=4, share_prefixes=True, scheduler="asha", grace_period=1,
                reduction_factor=2)
    spec["train"]["epochs"] = 4  # 6 steps an epoch, 24 in all
    spec["space"] = {"reg_start_step": {"choices": [6, 12, 15, 20]},
                     "reg_lambda": {"choices": [1e-3, 3e-2]}, "l1_ratio": 0.5}
    job = harness.run(harness.submit(spec))
    trials = harness.trials(job.id)
    assert job.status == "succeeded"
    assert len(trials) == 8 and all("-m" in t.trial_id for t in trials)
    assert len({(t.config["reg_start_step"], t.config["reg_lambda"]) for t in trials}) == 8
    completed = [t for t in trials if t.status == "completed"]
    stopped = [t for t in trials if t.status == "stopped"]
    assert completed and all(t.iteration == 4 for t in completed)
    assert all(t.status in ("completed", "stopped") for t in trials)
    assert all(t.iteration in (1, 2) for t in stopped)  # stops happen at rungs

    # Every member's every epoch, in its own MLflow run, equals training it alone (within
    # the population tolerance: each prefix group trains batched by default).
    parsed = validate_spec(spec)
    history = harness.history(job, "val_accuracy")
    losses = harness.history(job, "val_loss")
    assert set(history) == {t.trial_id for t in trials}
    for trial in trials:
        alone = Trainer(build_setup(parsed, trial.config))
        expected = [alone.train_epoch() for _ in range(trial.iteration)]
        assert [s for s, _ in history[trial.trial_id]] == list(range(1, trial.iteration + 1))
        assert [v for _, v in history[trial.trial_id]] == pytest.approx(
            [m["val_accuracy"] for m in expected], rel=1e-4)
        assert [v for _, v in losses[trial.trial_id]] == pytest.approx(
            [m["val_loss"] for m in expected], rel=1e-4)
        assert trial.metrics["val_accuracy"] == pytest.approx(expected[-1]["val_accuracy"],
                                                              rel=1e-4)
    runs = harness.mlflow.search_runs(
        [job.mlflow_experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{job.mlflow_parent_run_id}'")
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert job.best["metric"] == max(t.objective for t in trials)

    # The measured savings: each population's trainable counted the steps it trained
    # and kept them in its last checkpoint (Tune's result.json is off in the driver).
    finals = _final_compute(harness.settings.results_path)
    assert len(finals) == 2
    steps = sum(r["steps"] for r in finals)
    independent = sum(r["independent"] for r in finals)
    assert independent == sum(int(t.metrics["step"]) for t in trials)
    assert steps < independent
    print(f"shared-prefix populations: {steps} steps vs {independent} independent "
          f"({steps / independent:.0%})")
