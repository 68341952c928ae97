"""backfill: after a driver restart, MLflow gets the epochs only the job store has
(real SQLite job store and MLflow store, no Ray)."""

from __future__ import annotations

from pathlib import Path

from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny


def _metrics(epoch: int) -> dict[str, float]:
    return {"epoch": float(epoch), "val_accuracy": 0.5 + epoch / 10, "train_loss": 1 / epoch,
            "objective_se": 0.01}


def test_a_restarted_driver_copies_what_mlflow_lacks_and_ends_finished_runs(
        tmp_path: Path) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from service.store import open_store
    from workers.tune.backfill import backfill
    from workers.tune.tracking import ParentRun

    spec = validate_spec(tiny("backfill"))
    store = open_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    job, _ = store.create_job(name="b", owner="o", spec=spec.model_dump(mode="json"),
                              num_trials=4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = ParentRun(uri, (tmp_path / "artifacts").as_uri(), job.id, spec, "o")
    client = MlflowClient(uri)

    def run_with(trial_id: str, steps: list[int]) -> str:
        run = client.create_run(parent.experiment_id, tags={
            "mlflow.parentRunId": parent.run_id, "regtune.job_id": job.id,
            "regtune.trial_id": trial_id})
        client.log_batch(run.info.run_id, metrics=[
            Metric(k, v, 0, s) for s in steps for k, v in _metrics(s).items()
            if k != "objective_se"])
        return run.info.run_id

    # a: finished, MLflow has epoch 1 of 3 and the run is RUNNING (the writer was killed);
    # b: finished, no run at all; c: still running, MLflow has 2 of 3; d: never reported.
    plan = {"a": ("completed", 3, [1]), "b": ("completed", 2, None),
            "c": ("running", 3, [1, 2]), "d": ("pending", 0, None)}
    for trial_id, (status, epochs, logged) in plan.items():
        run_id = run_with(trial_id, logged) if logged is not None else None
        store.upsert_trial(job.id, trial_id, status=status, iteration=epochs,
                           config={"reg_lambda": 0.001, "loss": "cross_entropy"},
                           **({"mlflow_run_id": run_id} if run_id else {}))
        store.record(job.id, events=[("trial_result", {"trial_id": trial_id, "iteration": e,
                                                        "metrics": _metrics(e)})
                                     for e in range(1, epochs + 1)])

    stats = backfill(store, job.id, client, parent.experiment_id, parent.run_id)
    assert stats == {"runs_made": 1, "epochs_written": 2 + 2 + 1, "runs_ended": 2}
    runs = {t.trial_id: t.mlflow_run_id for t in store.list_trials(job.id)}
    assert runs["b"] is not None and runs["d"] is None

    def steps(trial_id: str, key: str = "val_accuracy") -> list[int]:
        return sorted(m.step for m in client.get_metric_history(runs[trial_id], key))
    assert steps("a") == [1, 2, 3] and steps("b") == [1, 2] and steps("c") == [1, 2, 3]
    assert steps("a", "objective_se") == []  # the store's own, never MLflow's
    status = {t: client.get_run(runs[t]).info.status for t in "abc"}
    assert status == {"a": "FINISHED", "b": "FINISHED", "c": "RUNNING"}
    b = client.get_run(runs["b"])
    assert b.data.params == {"reg_lambda": "0.001", "loss": "cross_entropy"}
    assert b.data.tags["mlflow.parentRunId"] == parent.run_id

    again = backfill(store, job.id, client, parent.experiment_id, parent.run_id)
    assert again == {"runs_made": 0, "epochs_written": 0, "runs_ended": 0}
    assert steps("a") == [1, 2, 3]  # nothing twice
    store.close()
