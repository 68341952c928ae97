"""The Tune trainable: one trial = one ``Trainer`` stepped epoch by epoch.

A trial checkpoints every ``checkpoint_interval_s`` seconds of training (the
service setting ``REGTUNE_CHECKPOINT_INTERVAL_S``), so Ray can retry it after a
worker dies and ``Tuner.restore`` resumes it near where it stopped. Not every
epoch: a checkpoint costs ~15 ms of trial time per epoch, and with Tune's
``num_to_keep`` each one also forces an experiment snapshot in the driver. What
a restarted trial re-trains since its last checkpoint is deterministic (the
trainer restores bit-identically) and the driver's callbacks drop epochs they
have already recorded. Trials a scheduler *pauses* (hyperband) or *copies* (pbt,
pb2) checkpoint every epoch: those decisions act on the latest checkpoint.

The trial reports metrics only; MLflow and the job store are written by the
driver's callbacks (``workers.tune.reporting``), so a trial spends its time training.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from search_spaces import SearchSpec, catalog
from workers.tune.schedulers import PAUSING
from workers.tune.space import trial_params


class CheckpointPolicy:
    """Whether a trial saves a checkpoint after the epoch it just finished."""

    def __init__(self, spec: SearchSpec, interval_s: float,
                 clock: Any = time.monotonic) -> None:
        self.every_epoch = (interval_s <= 0 or spec.scheduler in PAUSING
                            or spec.search.algorithm in catalog.POPULATION_ALGORITHMS)
        self.interval_s = interval_s
        self.clock = clock
        self.last = clock()

    def due(self, final: bool) -> bool:
        """After this epoch? Never after the last one: a finished trial is not resumed."""
        if final:
            return False
        if self.every_epoch:
            return True
        now = self.clock()
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True


def placement(ray_module: Any) -> dict[str, str]:
    """Where this trial runs: recorded in MLflow so GPU sharing can be audited."""
    ctx = ray_module.get_runtime_context()
    gpu_ids = [str(g) for g in ray_module.get_gpu_ids()]
    return {
        "node_ip": ray_module.util.get_node_ip_address(),
        "node_id": ctx.get_node_id(),
        "hostname": socket.gethostname(),
        "gpu_ids": ",".join(gpu_ids),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }


def limit_gpu_memory(device: Any, fraction: float | None) -> bool:
    """Cap this process's CUDA memory when trials share a GPU; False when not applied."""
    import torch

    if fraction is None or getattr(device, "type", "cpu") != "cuda":
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return True


def train_trial(config: dict[str, Any], spec_json: dict[str, Any],
                checkpoint_interval_s: float = 0.0) -> None:
    import ray
    from ray import tune

    from workers.training import Trainer, build_setup, select_device

    spec = SearchSpec.model_validate(spec_json)
    params = trial_params(spec, config)
    device = select_device()
    limit_gpu_memory(device, spec.resources.memory_fraction)
    trainer = Trainer(build_setup(spec, params), device)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.restore(Path(directory))
    where = placement(ray)
    policy = CheckpointPolicy(spec, checkpoint_interval_s)
    while not trainer.done:
        metrics = trainer.train_epoch()
        if not policy.due(final=trainer.done):
            tune.report({**metrics, **where})
            continue
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(Path(directory))
            tune.report({**metrics, **where},
                        checkpoint=tune.Checkpoint.from_directory(directory))
