"""A restored trial whose checkpoint was deleted under a stale snapshot starts over.

The real Tune, in the local Ray: a trial checkpoints after epoch 1 and fails in epoch
2; its checkpoint is then deleted (what ``num_to_keep=1`` does when a killed driver's
snapshot lags behind) and the experiment is restored with the trial resumed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from workers.tune.recovery import MissingCheckpointGuard, checkpoint_missing

EPOCHS = 3


def make_trainable(allowed: Path) -> Callable[[dict], None]:
    """Three epochs, a checkpoint each; epoch 2 fails until ``allowed`` exists. Every
    epoch trained is appended to ``trained``. A closure: Ray ships it by value."""
    flag, trained = str(allowed), str(allowed.with_name("trained"))

    def trainable(config: dict) -> None:
        import os
        import tempfile

        from ray import tune

        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                start = int(Path(directory, "epoch").read_text())
        for epoch in range(start + 1, EPOCHS + 1):
            if epoch == 2 and not os.path.exists(flag):
                raise RuntimeError("the first attempt fails in epoch 2")
            with open(trained, "a") as log:
                log.write(f"{epoch} ")
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "epoch").write_text(str(epoch))
                tune.report({"epoch": epoch, "resumed_from": start},
                            checkpoint=tune.Checkpoint.from_directory(directory))

    return trainable


def run_then_restore(tmp_path: Path, callbacks: list) -> Any:
    """Run until the trial fails, delete its checkpoint, restore with the trial resumed."""
    from ray import tune

    allowed = tmp_path / "allowed"
    trainable = make_trainable(allowed)
    tuner = tune.Tuner(trainable, param_space={"x": 1},
                       tune_config=tune.TuneConfig(num_samples=1),
                       run_config=tune.RunConfig(
                           name="exp", storage_path=str(tmp_path / "results"),
                           callbacks=callbacks, verbose=0,
                           checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    first = tuner.fit()[0]
    assert first.error is not None and first.metrics["epoch"] == 1
    assert first.checkpoint is not None and not checkpoint_missing(first.checkpoint)
    shutil.rmtree(first.checkpoint.path)
    assert checkpoint_missing(first.checkpoint)
    allowed.touch()
    restored = tune.Tuner.restore(str(tmp_path / "results" / "exp"), trainable,
                                  resume_errored=True)
    return restored.fit()[0]


def test_without_the_guard_tune_fails_the_trial(tmp_path: Path, ray_local: None) -> None:
    """Why the guard exists: Tune cannot restore from a checkpoint that is gone."""
    result = run_then_restore(tmp_path, [])
    assert result.error is not None
    assert "does not exist on storage" in str(result.error)


def test_the_guard_trains_the_trial_again_from_the_start(tmp_path: Path,
                                                         ray_local: None) -> None:
    result = run_then_restore(tmp_path, [MissingCheckpointGuard()])
    assert result.error is None
    assert result.metrics["epoch"] == EPOCHS
    # The first attempt trained epoch 1; the restored one from scratch, not from it.
    assert (tmp_path / "trained").read_text().split() == ["1", "1", "2", "3"]
    assert result.metrics["resumed_from"] == 0


def fake_trial(path: Path | None) -> SimpleNamespace:
    from pyarrow import fs

    class Manager:  # made again by the guard from its config alone: no checkpoint then
        def __init__(self, config: Any, latest: Any = None) -> None:
            self.checkpoint_config = config
            self.latest = latest

    manager = Manager("keep-1", None if path is None else SimpleNamespace(
        checkpoint=SimpleNamespace(filesystem=fs.LocalFileSystem(), path=str(path))))
    trial = SimpleNamespace(trial_id="t1", run_metadata=SimpleNamespace(
        checkpoint_manager=manager))
    trial.latest_checkpoint_result = manager.latest
    return trial


@pytest.mark.parametrize("exists", [True, False])
def test_only_a_missing_checkpoint_is_forgotten(tmp_path: Path, exists: bool) -> None:
    checkpoint = tmp_path / "checkpoint_000001"
    if exists:
        checkpoint.mkdir()
    trial = fake_trial(checkpoint)
    before = trial.run_metadata.checkpoint_manager
    MissingCheckpointGuard().on_trial_start(0, [], trial)
    after = trial.run_metadata.checkpoint_manager
    assert (after is before) is exists
    assert after.checkpoint_config == "keep-1" and (after.latest is None) is not exists


def test_a_trial_without_a_checkpoint_is_left_alone() -> None:
    trial = fake_trial(None)
    before = trial.run_metadata.checkpoint_manager
    MissingCheckpointGuard().on_trial_start(0, [], trial)
    assert trial.run_metadata.checkpoint_manager is before


def test_the_driver_runs_its_rounds_with_the_guard(harness, monkeypatch) -> None:
    from tests.workers.tune.conftest import tiny
    from workers.tune import driver

    given: list[Any] = []

    def capture(spec: Any, job: Any, store: Any, settings: Any, callbacks: list) -> None:
        given.extend(callbacks)
        raise RuntimeError("stop here")

    monkeypatch.setattr(driver, "run_rounds", capture)
    job_id = harness.submit(tiny("guard", num_trials=1))
    with pytest.raises(RuntimeError, match="stop here"):
        harness.run(job_id)
    assert any(isinstance(c, MissingCheckpointGuard) for c in given)


# --- a searcher state older than the trial list -------------------------------------------

SAMPLES = 3


def run_then_age_the_searcher(tmp_path: Path) -> tuple[str, Callable[[dict], None]]:
    """An experiment of SAMPLES trials, run to the end, whose saved searcher state then
    says it made only one: what a kill between Tune's copies of the trial list and of
    the searcher's state leaves on storage."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.util import _atomic_save, _load_newest_checkpoint

    def trainable(config: dict) -> None:
        from ray import tune

        tune.report({"loss": config["x"]})

    searcher = ConcurrencyLimiter(OptunaSearch(metric="loss", mode="min", seed=0), 1)
    tuner = tune.Tuner(trainable, param_space={"x": tune.uniform(0.0, 1.0)},
                       tune_config=tune.TuneConfig(num_samples=SAMPLES, search_alg=searcher),
                       run_config=tune.RunConfig(name="exp", verbose=0,
                                                 storage_path=str(tmp_path / "results")))
    assert len(tuner.fit()) == SAMPLES
    path = str(tmp_path / "results" / "exp")
    pattern = SearchGenerator.CKPT_FILE_TMPL.format("*")
    state = _load_newest_checkpoint(path, pattern)
    assert state is not None and state["counter"] == SAMPLES
    name = sorted(Path(path).glob(pattern))[-1].name
    _atomic_save({**state, "counter": 1}, path, name, f"tmp-{name}")
    assert _load_newest_checkpoint(path, pattern)["counter"] == 1
    return path, trainable


def test_a_searcher_older_than_its_trials_makes_trials_past_the_budget(
        tmp_path: Path, ray_local: None) -> None:
    """Why the hook exists: restored as it is, Tune makes SAMPLES - 1 more trials."""
    from ray import tune

    path, trainable = run_then_age_the_searcher(tmp_path)
    assert len(tune.Tuner.restore(path, trainable, resume_unfinished=True).fit()) \
        == 2 * SAMPLES - 1


def test_the_restored_searcher_counts_the_restored_trials(tmp_path: Path,
                                                          ray_local: None) -> None:
    from ray import tune

    from workers.tune.recovery import searcher_counts_restored_trials

    path, trainable = run_then_age_the_searcher(tmp_path)
    with searcher_counts_restored_trials() as hooked:
        results = tune.Tuner.restore(path, trainable, resume_unfinished=True).fit()
    assert hooked is True
    assert len(results) == SAMPLES
    from ray.tune.execution.tune_controller import TuneController

    assert TuneController.resume.__name__ == "resume" and \
        TuneController.resume.__qualname__ == "TuneController.resume"  # unwrapped again
