"""The driver's two callbacks against a real SQLite MLflow store and job store, driven
as Tune drives them (no Ray): runs, params, per-epoch metrics, statuses, run ids in
the job store, and a restore from the pickled callbacks."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny


def result(epoch: int, acc: float) -> dict[str, Any]:
    return {"epoch": epoch, "training_iteration": epoch, "val_accuracy": acc,
            "train_loss": 1.0 / epoch, "step": 10 * epoch, "node_ip": "127.0.0.1",
            "node_id": "n1", "gpu_ids": ""}


def lingering_callback(tmp_path: Path, name: str) -> tuple[Any, Any, str]:
    """An MLflowTrialCallback whose writer lingers an hour (epochs stay queued unless
    something hurries it), a trial, and the tracking URI."""
    from workers.tune.reporting import MlflowTrialCallback
    from workers.tune.tracking import ParentRun

    spec = validate_spec(tiny(name))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = ParentRun(uri, (tmp_path / "artifacts").as_uri(), "0123456789ab", spec, "o")
    cb = MlflowTrialCallback(uri, parent.experiment_id, parent.run_id, "0123456789ab", spec,
                             interval_s=3600.0)
    trial = SimpleNamespace(trial_id="t0", config={"reg_lambda": 1e-3, "l1_ratio": 0.5},
                            last_result={})
    return cb, trial, uri


def driver_callbacks(tmp_path: Path, name: str, num_trials: int) -> tuple[Any, ...]:
    """A job in a real job store, its MLflow parent run, and the driver's two callbacks
    on them: (store, job, parent, tracking URI, (mlflow_cb, store_cb))."""
    from service.store import open_store
    from workers.tune.reporting import MlflowTrialCallback, StoreTrialCallback
    from workers.tune.tracking import ParentRun

    spec = validate_spec(tiny(name))
    uri, db = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(db)
    job, _ = store.create_job(name=spec.name, owner="o", spec=spec.model_dump(mode="json"),
                              num_trials=num_trials)
    parent = ParentRun(uri, (tmp_path / "artifacts").as_uri(), job.id, spec, "o")
    mlflow_cb = MlflowTrialCallback(uri, parent.experiment_id, parent.run_id, job.id, spec)
    return store, job, parent, uri, (mlflow_cb, StoreTrialCallback(db, job.id, spec, mlflow_cb))


def test_callbacks_record_runs_metrics_statuses_and_survive_a_restore(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    store, job, parent, uri, (mlflow_cb, store_cb) = driver_callbacks(
        tmp_path, "report-real", num_trials=3)  # 3 epochs
    callbacks = [mlflow_cb, store_cb]

    def call(cbs: list, hook: str, trial: Any, *args: Any) -> None:
        for cb in cbs:
            getattr(cb, hook)(0, [], trial, *args)

    t0 = SimpleNamespace(trial_id="t0", config={"reg_lambda": 1e-3, "l1_ratio": 0.5},
                         last_result={})
    t1 = SimpleNamespace(trial_id="t1", config={"reg_lambda": 1e-4, "l1_ratio": 0.0},
                         last_result={})
    for t in (t0, t1):
        call(callbacks, "on_trial_start", t)
    for epoch in (1, 2, 3):
        t0.last_result = result(epoch, 0.5 + 0.1 * epoch)
        call(callbacks, "on_trial_result", t0, t0.last_result)
    call(callbacks, "on_trial_complete", t0)
    t1.last_result = result(1, 0.2)
    call(callbacks, "on_trial_result", t1, t1.last_result)
    call(callbacks, "on_trial_error", t1)
    # A pickle of the callbacks taken mid-round with the writer running (Tune's own is
    # taken when a round begins); the restored copies share their MlflowTrialCallback.
    t2 = SimpleNamespace(trial_id="t2", config={"reg_lambda": 1e-2, "l1_ratio": 1.0},
                         last_result={})
    t2.last_result = result(1, 0.3)
    call(callbacks, "on_trial_result", t2, t2.last_result)
    restored = pickle.loads(pickle.dumps(callbacks))
    assert restored[1].mlflow_cb is restored[0] and restored[0]._writer is None
    for cb in callbacks:
        cb.on_experiment_end([])
    assert mlflow_cb.close() and mlflow_cb._writer is None
    # The restored round: t2 re-reports from its checkpoint (epoch 1 again), finishes.
    restored[0]._units, restored[1]._units = type(mlflow_cb._units)(), type(
        store_cb._units)()  # as if the snapshot predates t2's first result
    restored[0].run_ids.pop("t2", None)
    for epoch in (1, 2, 3):
        t2.last_result = result(epoch, 0.3 + 0.01 * epoch)
        call(restored, "on_trial_result", t2, t2.last_result)
    call(restored, "on_trial_complete", t2)
    for cb in restored:
        cb.on_experiment_end([])

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([parent.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    by_trial = {r.data.tags["regtune.trial_id"]: r for r in runs}
    assert sorted(by_trial) == ["t0", "t1", "t2"] and len(runs) == 3  # t2 found, not remade
    assert {k: r.info.status for k, r in by_trial.items()} == {
        "t0": "FINISHED", "t1": "FAILED", "t2": "FINISHED"}
    assert by_trial["t0"].data.params["reg_lambda"] == "0.001"
    assert by_trial["t0"].data.tags["regtune.node_ip"] == "127.0.0.1"
    for trial_id, steps in (("t0", [1, 2, 3]), ("t1", [1]), ("t2", [1, 2, 3])):
        history = client.get_metric_history(by_trial[trial_id].info.run_id, "val_accuracy")
        assert sorted({m.step for m in history}) == steps, trial_id
    last = client.get_metric_history(by_trial["t2"].info.run_id, "val_accuracy")[-1]
    assert last.step == 3 and abs(last.value - 0.33) < 1e-9
    rows = {t.trial_id: t for t in store.list_trials(job.id)}
    assert {k: t.mlflow_run_id for k, t in rows.items()} == {
        k: r.info.run_id for k, r in by_trial.items()}
    assert rows["t0"].status == "completed" and rows["t1"].status == "failed"
    best = store.get_job(job.id).best
    assert best["trial_id"] == "t0" and best["mlflow_run_id"] == by_trial["t0"].info.run_id
    store.close()


def test_a_snapshot_counts_only_epochs_mlflow_has(tmp_path: Path) -> None:
    """Epochs still queued in the writer are not recorded for a restored driver; neither
    a checkpoint nor a finished trial waits for MLflow (backfill.py covers a kill)."""
    from mlflow.tracking import MlflowClient

    cb, trial, uri = lingering_callback(tmp_path, "report-snapshot")
    trial.last_result = result(1, 0.5)
    cb.on_trial_result(0, [], trial, trial.last_result)
    assert cb.writer.run_id("t0") is not None  # a new run is made at once, with epoch 1
    cb.writer.flush()
    for epoch in (2, 3):
        trial.last_result = result(epoch, 0.5 + 0.1 * epoch)
        cb.on_trial_result(0, [], trial, trial.last_result)
    cb.on_checkpoint(0, [], trial, checkpoint=object())
    restored = pickle.loads(pickle.dumps(cb))
    assert cb._units.epochs["t0"] == 3
    assert restored._units.epochs["t0"] == 1  # 2 and 3 were only queued

    cb.on_trial_complete(0, [], trial)  # enqueued, not waited for
    assert cb.writer.written["t0"] == 1
    assert cb.close()  # the round's end writes everything
    history = MlflowClient(uri).get_metric_history(cb.run_ids["t0"], "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert MlflowClient(uri).get_run(cb.run_ids["t0"]).info.status == "FINISHED"


def test_a_trial_finished_before_its_run_was_made_is_linked_at_the_round_end(
        tmp_path: Path) -> None:
    """Completion does not wait for MLflow: a run made later is linked when the round ends."""
    from service.store import open_store
    from workers.tune.reporting import StoreTrialCallback

    spec = validate_spec(tiny("report-link"))
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(db)
    job, _ = store.create_job(name="l", owner="o", spec=spec.model_dump(mode="json"),
                              num_trials=1)
    mlflow_cb = SimpleNamespace(run_ids={})  # the writer has not made the run yet
    cb = StoreTrialCallback(db, job.id, spec, mlflow_cb)
    trial = SimpleNamespace(trial_id="t0", config={"reg_lambda": 1e-3, "l1_ratio": 0.5},
                            last_result=result(3, 0.7))
    for epoch in (1, 2, 3):
        cb.on_trial_result(0, [], trial, result(epoch, 0.5 + 0.1 * epoch))
    cb.on_trial_complete(0, [], trial)  # returns at once, without a run id
    row = store.get_trial(job.id, "t0")
    assert row.status == "completed" and row.mlflow_run_id is None
    mlflow_cb.run_ids["t0"] = "f" * 32  # made by the writer, flushed at the round's end
    cb.on_experiment_end([])
    assert store.get_trial(job.id, "t0").mlflow_run_id == "f" * 32
    assert store.get_job(job.id).best["mlflow_run_id"] == "f" * 32
    store.close()


def test_a_trials_config_is_written_once_and_again_when_it_changes(tmp_path: Path) -> None:
    """Each epoch's record carries the config only when it differs from the one last
    written (a PBT exploit changes it); the stored trial always holds the current one."""
    from service.store import open_store
    from workers.tune.reporting import StoreTrialCallback

    spec = validate_spec(tiny("report-config"))
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(db)
    job, _ = store.create_job(name=spec.name, owner="o", spec=spec.model_dump(mode="json"),
                              num_trials=1)
    cb = StoreTrialCallback(db, job.id, spec, None)
    sent: list[bool] = []
    record = cb.store.record

    def spy(job_id: str, trials: Any = (), **kw: Any) -> Any:
        sent.extend("config" in fields for _, fields in trials)
        return record(job_id, trials=trials, **kw)

    cb.store.record = spy
    trial = SimpleNamespace(trial_id="t0", config={"reg_lambda": 1e-3, "l1_ratio": 0.5},
                            last_result={})
    for epoch in (1, 2):
        cb.on_trial_result(0, [], trial, result(epoch, 0.5))
    assert store.get_trial(job.id, "t0").config["reg_lambda"] == 1e-3
    trial.config = {"reg_lambda": 1e-2, "l1_ratio": 0.5}  # exploited: a new config
    cb.on_trial_result(0, [], trial, result(3, 0.6))
    assert sent == [True, False, True]
    assert store.get_trial(job.id, "t0").config["reg_lambda"] == 1e-2
    store.close()


def test_a_restored_round_takes_what_was_recorded_from_the_job_store(tmp_path: Path) -> None:
    """Tune unpickles the callbacks of the round's start (tuner.pkl) on a restore; the
    epochs a resumed trial reports again are neither stored nor logged twice, and the
    objective's history and the job's best come from the store."""
    from mlflow.tracking import MlflowClient

    store, job, _, uri, (mlflow_cb, store_cb) = driver_callbacks(
        tmp_path, "report-reconcile", num_trials=2)
    at_round_start = pickle.dumps([mlflow_cb, store_cb])  # what tuner.pkl holds

    t0 = SimpleNamespace(trial_id="t0", config={"reg_lambda": 1e-3, "l1_ratio": 0.5},
                         last_result={})
    accuracy = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.65}
    for epoch in (1, 2, 3):  # the first driver, killed after epoch 3 (checkpoint at 1)
        t0.last_result = result(epoch, accuracy[epoch])
        for cb in (mlflow_cb, store_cb):
            cb.on_trial_result(0, [], t0, t0.last_result)
    assert mlflow_cb.close()
    assert store.get_job(job.id).best["metric"] == 0.7

    restored = pickle.loads(at_round_start)
    assert restored[1].mlflow_cb is restored[0] and not restored[1]._units.epochs
    for cb in restored:
        cb.on_step_begin(0, [])
    assert restored[0]._units.epochs == restored[1]._units.epochs == {"t0": 3}
    for epoch in (2, 3, 4):  # resumed from its checkpoint
        t0.last_result = result(epoch, accuracy[epoch])
        for cb in restored:
            cb.on_trial_result(0, [], t0, t0.last_result)
    for cb in restored:
        cb.on_trial_complete(0, [], t0)
        cb.on_experiment_end([])

    results = [e.payload for e in store.events_since(job.id, 0, limit=100)
               if e.kind == "trial_result"]
    assert [r["iteration"] for r in results] == [1, 2, 3, 4]
    from search_spaces.selection import standard_error

    assert results[-1]["metrics"]["objective_se"] == standard_error(
        [accuracy[e] for e in (1, 2, 3, 4)])
    best = store.get_job(job.id).best  # epoch 4's 0.65 did not replace the stored 0.7
    assert best["metric"] == 0.7 and best["trial_id"] == "t0"
    run_id = store.list_trials(job.id)[0].mlflow_run_id
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    store.close()
