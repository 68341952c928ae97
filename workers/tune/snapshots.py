"""Tune's experiment snapshot when a restore would need a new one, not after every step.

Why: ``Tuner.restore`` resumes from the experiment snapshot (every trial's status
and latest checkpoint, and the searcher's state). The driver used to take one after
every step of Tune's loop (``TUNE_GLOBAL_CHECKPOINT_S=0``) so that a driver killed at
any moment neither re-runs a finished trial nor forgets one the searcher made. But
a step comes with every result and every 0.1 s while Tune waits, and each snapshot
serialises the trials and pickles the searcher, then copies the directory in a
background thread: the largest single cost in the driver's profile (bench B1,
B2). Meanwhile each trial waits at ``tune.report`` for the driver before its next
epoch.

What a restore needs changes far less often than that. A result that comes with
no checkpoint changes nothing a restored trial can use: it resumes from its latest
checkpoint either way, and the epochs it trains again are recorded by the job
store, which the driver's callbacks and the MLflow backfill already reconcile. So a
snapshot is taken only when:

* a trial was added (the searcher's state moved), started, paused, restored,
  saved, checkpointed, finished, failed or requeued: counted by
  :class:`SnapshotTrigger` (a Tune callback) and by the sizes of the controller's
  per-status trial sets, which change with every status Tune sets, callback or not;
* Tune forces one (the end of the experiment; ``CheckpointConfig(num_to_keep)``
  reached by a trial's checkpoints);
* ``refresh_s`` has passed since the last one (the searcher's and scheduler's view
  of intermediate results stays at most that old);
* the last attempt's copy did not start (Tune skips a copy while the previous one
  is still running): tried again at the next step, as before.

The hook wraps ``_ExperimentCheckpointManager.sync_up_experiment_state``, a private
method of Ray Tune, for the duration of one ``Tuner.fit``. If Ray renames what it
reads, :func:`change_driven_snapshots` leaves Tune's own behaviour in place and
logs why; ``tests/workers/tune/test_snapshots.py`` fails on the installed Ray first.
Setting ``TUNE_GLOBAL_CHECKPOINT_S`` for the driver turns the policy off and gives
Tune's own (``0``: after every step; ``auto``: Tune's adaptive period).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from ray.tune import Callback

log = logging.getLogger("regtune.snapshots")

#: Seconds after which a snapshot is taken even if no trial changed status.
REFRESH_S = 30.0
#: The controller's per-status trial sets (``TuneController._set_trial_status``).
STATUS_SETS = ("_trials", "_pending_trials", "_running_trials", "_paused_trials",
               "_stopped_trials", "_failed_trials")

_changes = 0  # bumped by every SnapshotTrigger in this process (one Tuner.fit at a time)


class SnapshotTrigger(Callback):
    """Counts the trial events after which the experiment snapshot is out of date.

    A module-level count, not the instance's: ``Tuner.restore`` unpickles its own copy
    of the callbacks, and the hook must see that copy's events too.
    """

    def _changed(self, *args: Any, **info: Any) -> None:
        global _changes
        _changes += 1

    on_trial_add = _changed
    on_trial_start = _changed
    on_trial_restore = _changed
    on_trial_save = _changed
    on_trial_complete = _changed
    on_trial_error = _changed
    on_trial_recover = _changed
    on_checkpoint = _changed


def _now() -> float:
    return time.monotonic()


def fingerprint(controller: Any) -> tuple[int, ...] | None:
    """What the snapshot depends on, or None where it cannot be read (then: save)."""
    try:
        return (_changes, *(len(getattr(controller, name)) for name in STATUS_SETS))
    except (AttributeError, TypeError):
        return None


def _manager_class() -> Any:
    """Tune's experiment checkpoint manager class, or None if Ray moved it."""
    try:
        from ray.tune.execution.experiment_state import _ExperimentCheckpointManager
    except ImportError:
        return None
    method = getattr(_ExperimentCheckpointManager, "sync_up_experiment_state", None)
    needed = ("_should_force_sync_up", "_last_sync_time", "_last_save_time")
    probe = _ExperimentCheckpointManager.__init__.__code__.co_names
    if method is None or not all(name in probe for name in needed):
        return None
    return _ExperimentCheckpointManager


def _wrap(original: Any, refresh_s: float) -> Any:
    def sync_up_experiment_state(self: Any, save_fn: Any, force: bool = False,
                                 wait: bool = False) -> None:
        state = fingerprint(getattr(save_fn, "__self__", None))
        now = _now()
        last = getattr(self, "_regtune_synced", None)
        due = (force or self._should_force_sync_up or state is None or last is None
               or last[0] != state or now - last[1] >= refresh_s)
        if not due:
            return None
        launched_before = self._last_sync_time
        saved_before = self._last_save_time
        result = original(self, save_fn, force=force, wait=wait)
        # Only a copy that started counts: one skipped (the previous copy still
        # running) or a save Tune's own period skipped leaves the state due.
        if self._last_save_time != saved_before and self._last_sync_time != launched_before:
            self._regtune_synced = (state, now)
        return result

    sync_up_experiment_state.__wrapped__ = original  # type: ignore[attr-defined]
    return sync_up_experiment_state


@contextlib.contextmanager
def change_driven_snapshots(refresh_s: float = REFRESH_S) -> Iterator[bool]:
    """Within the block, Tune snapshots the experiment only when it changed.

    Yields whether the policy is on: not where ``TUNE_GLOBAL_CHECKPOINT_S`` is set (the
    operator asked for Tune's own period), nor where Ray no longer has what the hook
    wraps. Tune's period is set to 0 inside the block so the policy alone decides.
    """
    cls = _manager_class()
    if "TUNE_GLOBAL_CHECKPOINT_S" in os.environ or cls is None:
        if cls is None:
            log.warning("Ray Tune's experiment checkpoint manager is not what "
                        "workers.tune.snapshots wraps; Tune snapshots on its own period")
        yield False
        return
    original = cls.sync_up_experiment_state
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    cls.sync_up_experiment_state = _wrap(original, refresh_s)
    try:
        yield True
    finally:
        cls.sync_up_experiment_state = original
        os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
