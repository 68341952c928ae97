"""The Tune trainable: one trial = one ``Trainer`` stepped epoch by epoch.

Each epoch ends with a checkpoint, so ASHA can pause a trial, Ray can retry it
after a worker dies, and ``Tuner.restore`` resumes it where it stopped. The
trial reports metrics only; MLflow and the job store are written by the driver's
callbacks (``workers.tune.reporting``), so a trial spends its time training.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from search_spaces import SearchSpec
from workers.tune.space import trial_params


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


def train_trial(config: dict[str, Any], spec_json: dict[str, Any]) -> None:
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
    while not trainer.done:
        metrics = trainer.train_epoch()
        with tempfile.TemporaryDirectory() as directory:
            trainer.save(Path(directory))
            tune.report({**metrics, **where},
                        checkpoint=tune.Checkpoint.from_directory(directory))
