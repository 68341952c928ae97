"""The Tune trainable: one trial = one ``Trainer`` stepped epoch by epoch.

A trial checkpoints after its first and last epochs and every
``checkpoint_interval_s`` seconds of training in between (the service setting
``REGTUNE_CHECKPOINT_INTERVAL_S``), so Ray can retry it after a worker dies and
``Tuner.restore`` resumes it near where it stopped. Not every epoch: a checkpoint costs ~15 ms of trial time per epoch, and with Tune's
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
    """Whether a trial saves a checkpoint after the epoch it just finished.

    Always after its first and its last epoch, whatever the interval. Not for the
    weights: because Tune (with ``num_to_keep``) answers a trial checkpoint with an
    experiment snapshot it *waits* for, where its other snapshots are
    copied to storage in the background and skipped while a copy is in flight. A
    waited snapshot at the first result means a trial the job store has recorded is
    known to a restored experiment (else it would come back as an orphan beside a
    replacement); one at the last epoch leaves no copy in flight when the trial
    completes, so its completion reaches storage at once and a driver killed just
    after it does not run the trial again.
    """

    def __init__(self, spec: SearchSpec, interval_s: float,
                 clock: Any = time.monotonic) -> None:
        self.every_epoch = (interval_s <= 0 or spec.scheduler in PAUSING
                            or spec.search.algorithm in catalog.POPULATION_ALGORITHMS)
        self.interval_s = interval_s
        self.clock = clock
        self.last: float | None = None

    def due(self, final: bool) -> bool:
        """After this epoch?"""
        now = self.clock()
        if (self.last is None or final or self.every_epoch
                or now - self.last >= self.interval_s):
            self.last = now
            return True
        return False


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


def cpu_threads(cpus: float) -> int:
    """Torch threads for a trial holding ``cpus`` CPUs: its whole CPUs, at least one."""
    return max(1, int(cpus))


def prepare_worker(spec: SearchSpec) -> Any:
    """The trial's device, with this process's torch threads and GPU memory set for it.

    Threads are set here, not left to ``OMP_NUM_THREADS``: Ray sets that variable
    for a task's CPUs, but torch sizes its pool when it is first imported, and a
    worker that imported it earlier (a node started with Ray's
    ``RAY_preload_python_modules=torch``, a worker setup hook) runs as many threads
    as the node has cores, and trials sharing the node oversubscribe it.
    """
    import torch

    from workers.training import select_device

    torch.set_num_threads(cpu_threads(spec.resources.cpu))
    device = select_device()
    limit_gpu_memory(device, spec.resources.memory_fraction)
    return device


def train_trial(config: dict[str, Any], spec_json: dict[str, Any],
                checkpoint_interval_s: float = 0.0) -> None:
    import ray
    from ray import tune

    from workers.training import Trainer, build_setup

    spec = SearchSpec.model_validate(spec_json)
    params = trial_params(spec, config)
    device = prepare_worker(spec)
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
