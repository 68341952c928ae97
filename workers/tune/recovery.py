"""Restores from a snapshot that lags: a trial whose checkpoint is gone starts over
instead of failing, and a searcher whose state is older than the trial list does not
make trials past the budget.

Why this exists: Tune deletes a trial's older checkpoint as soon as it registers a
newer one (``CheckpointConfig(num_to_keep=1)``), but it writes the experiment
snapshot that ``Tuner.restore`` reads from a background thread, and skips a write
while the previous one is still copying. A driver killed in that window leaves a
snapshot naming a checkpoint that no longer exists. Tune then fails the restored
trial with "Could not recover from checkpoint as it does not exist on storage
anymore", retries it from the same missing checkpoint, and marks it ERROR: a trial
of the budget lost to the kill, not to anything it did (caught in CI by
tests/e2e/test_resume.py).

A trial's training is deterministic given its config and seed, so starting it from
scratch gives the result it would have given; the epochs it trains again are not
recorded twice (reporting.py counts what each trial has recorded). The check runs
in ``on_trial_start``, which Tune calls before it schedules the restore.

The same copy writes the trial list (``experiment_state-*.json``) and the searcher's
state (``search_gen_state-*.json``, with the count of trials it has made) as separate
files, so a kill between them restores a searcher that counts fewer trials than the
list holds. Tune then makes trials until *its* count reaches ``num_samples``: the
round runs more trials than the job asked for (tests/e2e/test_resume.py saw 7 of 6 in
CI). Every trial in the list was made by this round's searcher, so
:func:`searcher_counts_restored_trials` raises its count to at least the list's
length once Tune has restored both.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from ray.tune import Callback

log = logging.getLogger("regtune.recovery")


def checkpoint_missing(checkpoint: Any) -> bool:
    """Whether a Tune checkpoint's directory is gone from its (pyarrow) filesystem."""
    from pyarrow import fs

    return checkpoint.filesystem.get_file_info(checkpoint.path).type == fs.FileType.NotFound


class MissingCheckpointGuard(Callback):
    """Before a trial restores, forget its checkpoints if the latest one is gone."""

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.latest_checkpoint_result
        if result is None or result.checkpoint is None:
            return
        try:
            if not checkpoint_missing(result.checkpoint):
                return
            manager = trial.run_metadata.checkpoint_manager
            # A fresh manager of the same kind and config: no checkpoint to restore from.
            trial.run_metadata.checkpoint_manager = type(manager)(manager.checkpoint_config)
        except Exception:  # noqa: BLE001 - Tune's own error is what the user sees then
            log.exception("could not check the checkpoint of trial %s", trial.trial_id)
            return
        log.warning("trial %s: its checkpoint %s is gone (a driver killed before Tune "
                    "saved its snapshot); training it again from the start",
                    trial.trial_id, result.checkpoint.path)


@contextlib.contextmanager
def searcher_counts_restored_trials() -> Iterator[bool]:
    """While it is open, a restored Tune experiment's searcher counts at least the trials
    the restored experiment holds (see the module docstring). Yields whether the hook
    is in place: it wraps ``TuneController.resume``, a private method of Ray Tune, and
    reads ``SearchGenerator._counter``; if Ray renames either, Tune's own behaviour is
    left in place and this logs why (tests/workers/tune/test_recovery.py fails first).
    """
    try:
        from ray.tune.execution.tune_controller import TuneController
    except ImportError:  # pragma: no cover - Ray reorganised
        TuneController = None  # noqa: N806
    original = getattr(TuneController, "resume", None)
    if original is None:
        log.warning("Ray Tune has no TuneController.resume: a restored searcher is not "
                    "reconciled with the restored trials")
        yield False
        return

    def resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        catch_up(self._search_alg, len(self.get_trials()))
        return out

    TuneController.resume = resume
    try:
        yield True
    finally:
        TuneController.resume = original


def catch_up(search_alg: Any, trials: int) -> None:
    """Raise a restored searcher's count of made trials to ``trials``. Only Tune's
    ``SearchGenerator`` (a ``Searcher``: Optuna's, the population searcher) counts
    that way; a grid's ``BasicVariantGenerator`` keeps other state and is left alone."""
    from ray.tune.search.search_generator import SearchGenerator

    if not isinstance(search_alg, SearchGenerator):
        return
    counter = getattr(search_alg, "_counter", None)
    if not isinstance(counter, int):
        log.warning("Ray Tune's SearchGenerator keeps no _counter: a restored searcher is "
                    "not reconciled with the restored trials")
        return
    if counter < trials:
        log.warning("the restored searcher had made %d trials, the restored experiment "
                    "holds %d (its state predates the last snapshot of the trials): "
                    "counting %d, so no trial is made past the budget", counter, trials,
                    trials)
        search_alg._counter = trials
