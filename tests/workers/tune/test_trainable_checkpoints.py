"""How often a trial checkpoints, and that a trial killed mid-run is recorded once.

A trial checkpoints every REGTUNE_CHECKPOINT_INTERVAL_S seconds of training, not
every epoch; a trial restarted from an older checkpoint (or from scratch) trains
some epochs again, and the driver must not record them twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny
from workers.tune.trainable import CheckpointPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(interval_s: float, **search: object) -> tuple[CheckpointPolicy, Clock]:
    clock = Clock()
    spec = validate_spec(tiny("ckpt", **search))
    return CheckpointPolicy(spec, interval_s, clock=clock), clock


def test_an_interval_spaces_checkpoints_by_training_time() -> None:
    p, clock = policy(10.0, scheduler="asha")
    due = []
    for epoch in range(1, 10):
        clock.now += 3.0
        due.append(p.due(final=epoch == 9))
    # 3 s epochs, 10 s interval: the first epoch, then 12 s after it, and the last.
    assert due == [True, False, False, False, True, False, False, False, True]


def test_the_first_and_last_epochs_always_checkpoint() -> None:
    p, clock = policy(3600.0)
    assert p.due(final=False) is True  # first
    clock.now += 60.0
    assert p.due(final=False) is False
    assert p.due(final=True) is True


@pytest.mark.parametrize("search", [{"scheduler": "hyperband"}, {"algorithm": "pbt"},
                                    {"algorithm": "pb2"}, {"scheduler": "asha"}])
def test_pausing_and_copying_searches_checkpoint_every_epoch(search: dict) -> None:
    p, _ = policy(10.0, **search)  # the clock never moves: only every_epoch says yes
    every = search.get("scheduler") == "hyperband" or "algorithm" in search
    assert p.every_epoch is every
    assert p.due(final=False) is True  # the first epoch, always
    assert p.due(final=False) is every


def _trial_processes() -> list[int]:
    """Ray names a trial's worker process after its actor: ``ray::ImplicitFunc...``."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::ImplicitFunc"):
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


EPOCHS = 16


def _kill_a_trial_midway(harness, job_id: str, killed: list[int]) -> None:
    """When a trial has recorded 2 epochs, SIGKILL its worker process (once)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(t.iteration >= 2 and t.status == "running" for t in harness.trials(job_id)):
            for pid in _trial_processes():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return
        time.sleep(0.05)


def test_a_killed_trial_is_retried_and_each_epoch_recorded_once(harness, monkeypatch) -> None:
    monkeypatch.setenv("REGTUNE_CHECKPOINT_INTERVAL_S", "0.2")
    from service.settings import get_settings

    get_settings.cache_clear()
    harness.settings = get_settings()
    spec = tiny("ckpt-kill", algorithm="random", scheduler="none", num_trials=1,
                max_concurrent=1)
    # ~0.1 s epochs: the killer (polling every 0.05 s) has ~1.4 s between the trial's
    # second epoch and its end, not 0.6 s as with 8 epochs, against a stalled poll.
    spec["train"].update(epochs=EPOCHS, batch_size=16)
    job_id = harness.submit(spec)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_trial_midway, args=(harness, job_id, killed))
    killer.start()
    job = harness.run(job_id)
    killer.join()
    assert killed, "the trial's worker was killed mid-run"
    (trial,) = harness.trials(job.id)
    assert job.status == "succeeded"
    assert trial.status == "completed" and trial.iteration == EPOCHS
    history = harness.history(job, "val_accuracy")
    steps = [step for step, _ in history[trial.trial_id]]
    assert steps == list(range(1, EPOCHS + 1)), steps  # the re-trained epochs are not logged again
