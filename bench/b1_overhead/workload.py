"""B1's work: the spec every mode trains (a λ grid on ``digits``, an MLP of 2×768), the
variants of the bare-Tune run, the calibration of epochs per trial, and (c) the floor:
a ``multiprocessing`` pool of 2 processes training the same configs."""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from typing import Any

SLOTS = 2
MODEL = {"name": "mlp", "hidden_sizes": [768, 768]}
GOAL_ETA = 0.9

#: Variants run in the bare-Tune subprocess: name -> label.
VARIANTS: dict[str, str] = {
    "bare": "bare Ray Tune (same trainable, Tune defaults: reuse_actors=False)",
    "bare_reuse": "bare Ray Tune + reuse_actors=True",
    "bare_min_reuse": "bare Ray Tune, no per-epoch checkpoint, reuse_actors=True",
    "driver": "workers.tune.driver.run() in-process, as the code is (no service, no "
              "driver start-up)",
    "driver_every_step": "the same with TUNE_GLOBAL_CHECKPOINT_S=0 (an experiment snapshot "
                         "after every step of Tune's loop, as the driver took them before "
                         "workers.tune.snapshots)",
    "driver_ckpt_auto": "the same with TUNE_GLOBAL_CHECKPOINT_S=auto (Tune's default "
                        "adaptive snapshot period)",
    "driver_every_epoch": "the same with REGTUNE_CHECKPOINT_INTERVAL_S=0 (a trial "
                          "checkpoint after every epoch, as before the interval)",
}
FULL_VARIANTS = ("bare", "bare_reuse", "bare_min_reuse", "driver", "driver_every_step",
                 "driver_ckpt_auto", "driver_every_epoch")
QUICK_VARIANTS = ("bare",)


def lambda_grid(n: int) -> list[float]:
    """n distinct, positive λ values, log-spaced over 1e-6..1e-2 (the work is the same)."""
    if n == 1:
        return [1e-4]
    return [float(f"{10 ** (-6 + 4 * i / (n - 1)):.3g}") for i in range(n)]


def b1_spec(n_trials: int, epochs: int) -> dict[str, Any]:
    return {
        "name": "bench-b1-overhead", "task": "digits",
        "objective": {"loss": "cross_entropy", "metric": "val_accuracy", "mode": "max"},
        "model": MODEL,
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0},
        "space": {"reg_lambda": {"choices": lambda_grid(n_trials)}, "l1_ratio": 0.0},
        "search": {"algorithm": "grid", "num_trials": n_trials, "max_concurrent": SLOTS,
                   "scheduler": "none", "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
    }


# --- (c) the floor: a process pool -----------------------------------------------------------


def _pool_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import workers.training  # noqa: F401 - warm, like a reused worker


def _pool_trial(spec_json: dict[str, Any], lam: float) -> dict[str, Any]:
    from search_spaces import SearchSpec
    from workers.training import Trainer, build_setup

    start = time.time()
    spec = SearchSpec.model_validate(spec_json)
    trainer = Trainer(build_setup(spec, spec.resolve_params({"reg_lambda": lam})), "cpu")
    epochs = []
    while not trainer.done:
        t0 = time.time()
        s = time.perf_counter()
        trainer.train_epoch()
        epochs.append({"pid": os.getpid(), "trainer": id(trainer), "epoch": trainer.epoch,
                       "lam": lam, "t0": t0, "dt": time.perf_counter() - s})
    return {"start": start, "end": time.time(), "epochs": epochs}


def _pool_calibrate(_: int) -> float:
    """Seconds per epoch of the B1 model on one core: the fastest of 5 after a warm-up.

    The fastest, not the median: on a shared machine the median follows whatever
    else runs, and trials would be calibrated short of 2 s once that load goes.
    """
    from search_spaces import SearchSpec
    from workers.training import Trainer, build_setup

    spec = SearchSpec.model_validate(b1_spec(2, 8))
    trainer = Trainer(build_setup(spec, spec.resolve_params({"reg_lambda": 1e-4})), "cpu")
    trainer.train_epoch()
    times = []
    for _ in range(5):
        s = time.perf_counter()
        trainer.train_epoch()
        times.append(time.perf_counter() - s)
    return min(times)


def calibrate_and_pool(n_trials: int, target_s: float) -> tuple[int, float, dict[str, Any]]:
    """Calibrate the epochs per trial, then run the pool floor. Returns (epochs, t_epoch, run)."""
    ctx = mp.get_context("spawn")
    t = time.monotonic()
    with ctx.Pool(SLOTS, initializer=_pool_init) as pool:
        start_s = time.monotonic() - t
        epoch_s = statistics.mean(pool.map(_pool_calibrate, range(SLOTS)))
        epochs = max(3, min(60, round(target_s / epoch_s)))
        spec = b1_spec(n_trials, epochs)
        lams = spec["space"]["reg_lambda"]["choices"]
        t0 = time.time()
        out = pool.starmap(_pool_trial, [(spec, lam) for lam in lams], chunksize=1)
        t1 = time.time()
    records = [e for trial in out for e in trial["epochs"]]
    return epochs, epoch_s, {"mode": "pool", "start": t0, "end": t1, "wall": t1 - t0,
                             "records": records, "pool_start_s": start_s}
