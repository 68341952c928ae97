"""Tune's experiment snapshot is taken when a restore needs one, not after every step.

The policy wraps Ray Tune's own experiment checkpoint manager; these tests drive that
real class (with a stand-in storage and controller) and then a real Tune run in the
local Ray, where every trial's end must be followed by a snapshot in the same step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from workers.tune import snapshots
from workers.tune.snapshots import SnapshotTrigger, change_driven_snapshots


class Syncer:
    """Tune's syncer: ``sync_up`` answers False while the previous copy runs."""

    def __init__(self) -> None:
        self.busy = False
        self.launched = 0

    def sync_up(self, local_dir: str, remote_dir: str, exclude: Any = None) -> bool:
        if self.busy:
            return False
        self.launched += 1
        return True

    def wait(self) -> None:
        pass


class Storage:
    def __init__(self, root: Path) -> None:
        self.experiment_driver_staging_path = str(root / "staging")
        self.experiment_fs_path = str(root / "experiment")
        self.syncer = Syncer()


class Controller:
    """The TuneController attributes the policy reads, and a counted ``save_to_dir``."""

    def __init__(self) -> None:
        for name in snapshots.STATUS_SETS:
            setattr(self, name, set())
        self.saves = 0

    def save_to_dir(self) -> None:
        self.saves += 1


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from ray.tune.execution import experiment_state

    # Ray's dataset serialisation hook needs a connected worker; nothing here has one.
    monkeypatch.setattr(experiment_state, "out_of_band_serialize_dataset",
                        contextlib.nullcontext)
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    return experiment_state._ExperimentCheckpointManager(
        storage=Storage(tmp_path), checkpoint_period=0)


def step(manager: Any, controller: Controller, force: bool = False) -> None:
    manager.sync_up_experiment_state(save_fn=controller.save_to_dir, force=force)


def test_the_installed_ray_has_what_the_policy_wraps() -> None:
    assert snapshots._manager_class() is not None
    with change_driven_snapshots() as on:
        assert on


def test_unchanged_steps_take_no_snapshot_and_changes_do(manager: Any) -> None:
    controller = Controller()
    with change_driven_snapshots():
        step(manager, controller)
        assert controller.saves == 1  # the first step of an experiment
        for _ in range(50):  # results without a status change, idle steps
            step(manager, controller)
        assert controller.saves == 1
        controller._running_trials.add("t1")  # a status Tune set with no callback
        step(manager, controller)
        step(manager, controller)
        assert controller.saves == 2
        SnapshotTrigger().on_checkpoint(iteration=3, trials=[], trial=None, checkpoint=None)
        step(manager, controller)
        assert controller.saves == 3
        SnapshotTrigger().on_trial_complete(iteration=4, trials=[], trial=None)
        step(manager, controller)
        assert controller.saves == 4
        step(manager, controller, force=True)  # the experiment's end
        assert controller.saves == 5
        manager._should_force_sync_up = True  # num_to_keep checkpoints reached
        step(manager, controller)
        assert controller.saves == 6
        step(manager, controller)
        assert controller.saves == 6  # the forced copy cleared Tune's flag


def test_a_copy_that_did_not_start_is_tried_again(manager: Any) -> None:
    controller = Controller()
    with change_driven_snapshots():
        step(manager, controller)
        manager._storage.syncer.busy = True
        controller._stopped_trials.add("t1")
        step(manager, controller)
        step(manager, controller)
        assert controller.saves == 3 and manager._storage.syncer.launched == 1
        manager._storage.syncer.busy = False
        step(manager, controller)
        assert manager._storage.syncer.launched == 2
        step(manager, controller)
        assert controller.saves == 4  # copied at last: nothing due


def test_a_snapshot_is_refreshed_after_refresh_s(manager: Any, monkeypatch:
                                                 pytest.MonkeyPatch) -> None:
    controller = Controller()
    clock = [100.0]
    monkeypatch.setattr(snapshots, "_now", lambda: clock[0])
    with change_driven_snapshots(refresh_s=30.0):
        step(manager, controller)
        clock[0] += 29.0
        step(manager, controller)
        assert controller.saves == 1
        clock[0] += 1.5
        step(manager, controller)
        assert controller.saves == 2


def test_an_operator_set_period_keeps_tunes_own_policy(manager: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    original = _ExperimentCheckpointManager.sync_up_experiment_state
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    controller = Controller()
    with change_driven_snapshots() as on:
        assert not on
        assert _ExperimentCheckpointManager.sync_up_experiment_state is original
        for _ in range(3):
            step(manager, controller)
    assert controller.saves == 3  # after every step, as asked
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "0"


def test_the_block_puts_tune_back(manager: Any) -> None:
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    original = _ExperimentCheckpointManager.sync_up_experiment_state
    with pytest.raises(RuntimeError), change_driven_snapshots():
        assert _ExperimentCheckpointManager.sync_up_experiment_state is not original
        raise RuntimeError("a fit that failed")
    assert _ExperimentCheckpointManager.sync_up_experiment_state is original
    assert "TUNE_GLOBAL_CHECKPOINT_S" not in os.environ


# --- the real Tune ------------------------------------------------------------------

REPORTS = 25


def make_quick() -> Any:
    """A closure: Ray ships it by value (the test module is not importable on workers)."""
    reports = REPORTS

    def quick(config: dict) -> None:
        from ray import tune

        for i in range(reports):
            tune.report({"loss": config["x"] / (i + 1)})

    return quick


class Steps:
    """Per step of Tune's loop, in the driver: which trials ended and whether the
    experiment was saved in it (``TuneController.save_to_dir``)."""

    def __init__(self) -> None:
        self.saved: set[int] = set()
        self.ended: list[int] = []
        self.results = 0


def run_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: bool) -> Steps:
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    steps = Steps()
    save_to_dir = TuneController.save_to_dir

    def counted(self: Any) -> None:
        steps.saved.add(self._iteration)
        save_to_dir(self)

    class Ends(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            steps.ended.append(iteration)

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                            **info: Any) -> None:
            steps.results += 1

    monkeypatch.setattr(TuneController, "save_to_dir", counted)
    if not policy:
        monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    tuner = tune.Tuner(
        make_quick(), param_space={"x": tune.grid_search([1.0, 2.0, 3.0, 4.0])},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name=f"snap-{policy}", storage_path=str(tmp_path),
                                  callbacks=[SnapshotTrigger(), Ends()], verbose=0))
    with change_driven_snapshots():
        grid = tuner.fit()
    assert not grid.errors and len(grid) == 4
    return steps


def test_a_real_tune_run_snapshots_each_trial_end_and_little_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_local: None) -> None:
    from ray import tune

    every = run_quick(tmp_path, monkeypatch, policy=False)
    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    changed = run_quick(tmp_path, monkeypatch, policy=True)
    assert every.results == changed.results == 4 * REPORTS
    # Each trial's end is in the snapshot taken in the same step of Tune's loop, so a
    # driver killed after it never runs the trial again.
    assert len(changed.ended) == 4
    assert set(changed.ended) <= changed.saved, (changed.ended, sorted(changed.saved))
    # Results alone no longer snapshot: far fewer than one per step.
    assert len(every.saved) >= every.results
    assert len(changed.saved) < len(every.saved) / 3, (len(changed.saved), len(every.saved))
    # The last snapshot holds every trial finished with all its results.
    restored = tune.Tuner.restore(str(tmp_path / "snap-True"), make_quick()).get_results()
    assert sorted(r.metrics["training_iteration"] for r in restored) == [REPORTS] * 4
