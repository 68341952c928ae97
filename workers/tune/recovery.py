"""A restored trial whose checkpoint is gone starts over instead of failing.

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
"""

from __future__ import annotations

import logging
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
