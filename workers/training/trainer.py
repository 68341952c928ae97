"""One trial's training loop: epochs in, metrics out, checkpoints at epoch boundaries.

Design choices and why:

* **Data on the device, no DataLoader.** Every task fits in memory; worker
  processes would cost more than the model and would add a source of
  nondeterminism. Batches are index slices of a per-epoch permutation drawn from
  the trainer's own ``torch.Generator``.
* **Own RNG streams.** Initialization and dropout use the global torch RNG, so
  the trainer swaps *its* saved global state in for each epoch and out again
  (``_rng_scope``). Two trainers in one process therefore cannot disturb each
  other, and a checkpoint can hold the exact state to resume from.
* **Penalty and blend from the schedule.** Step ``s`` (0-based, across epochs)
  uses ``factor(s)``; at a factor of 0 neither the penalty nor the Smooth-L1
  blend is even computed, so "no regularization before the start step" holds
  exactly, not approximately.
* **Metrics after each epoch on the full splits, in eval mode** (no dropout), so
  train_loss and val_loss are comparable and loss_gap means something.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from search_spaces import catalog
from workers.training import metrics as M
from workers.training.device import select_device
from workers.training.losses import PredictionLoss
from workers.training.models import ModelShape, build_model
from workers.training.optimizers import apply_hyperparams, build_optimizer
from workers.training.penalties import penalized_weights, penalty
from workers.training.schedules import RegSchedule
from workers.training.setup import TrialSetup
from workers.training.tasks import load_task

CHECKPOINT_FILE = "trainer.pt"
CHECKPOINT_FORMAT = 1
#: Offsets the data-order stream from the init stream, so the two are not the same sequence.
ORDER_SEED_OFFSET = 0x5EED
EVAL_CHUNK = 4096


class Trainer:
    """Trains one :class:`TrialSetup`, one epoch per :meth:`train_epoch` call."""

    def __init__(self, setup: TrialSetup, device: torch.device | None = None) -> None:
        self.setup = setup
        self.device = torch.device(device) if device is not None else select_device()
        if self.device.type == "cuda":
            # cuDNN autotuning picks kernels by timing, which differs run to run.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        data = load_task(setup.task).load(setup.task_options, setup.data_root)
        if data.kind != setup.kind:
            raise ValueError(f"task {setup.task!r} produced {data.kind} data, but the spec was "
                             f"validated as {setup.kind}; its losses and metrics would not apply")
        self.data = data.to(self.device)
        params = setup.params
        self.batch_size = int(params["batch_size"])
        self.n_train = len(data.x_train)
        self.steps_per_epoch = catalog.steps_per_epoch(self.n_train, self.batch_size)
        self.schedule = RegSchedule.from_params(params)
        self.loss = PredictionLoss.build(setup.kind, params)
        self.reg_lambda = float(params["reg_lambda"])
        self.l1_ratio = float(params["l1_ratio"])

        shape = ModelShape(in_features=data.in_features, n_outputs=data.n_outputs,
                           image_shape=data.image_shape, hidden_sizes=setup.hidden_sizes,
                           channels=setup.channels, dropout=float(params["dropout"]))
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(setup.seed)
            self.model = build_model(setup.model, shape).to(self.device)
            self._rng_cpu, self._rng_cuda = self._capture_rng()
        self.weights = penalized_weights(self.model)
        self.optimizer = build_optimizer(setup.optimizer, self.model.parameters(), params)
        self._order = torch.Generator(device="cpu")
        self._order.manual_seed(setup.seed + ORDER_SEED_OFFSET)
        self._epoch = 0
        self._step = 0
        self._initial_norms: tuple[float, float] | None = None

    # --- counters --------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self._epoch

    @property
    def step(self) -> int:
        """Completed optimizer steps, across epochs."""
        return self._step

    @property
    def done(self) -> bool:
        return self._epoch >= self.setup.epochs

    # --- RNG ---------------------------------------------------------------------

    def _cuda_devices(self) -> list[int]:
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None else torch.cuda.current_device()]

    def _capture_rng(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    @contextmanager
    def _rng_scope(self) -> Iterator[None]:
        """Run with this trainer's global-RNG state; leave the caller's untouched."""
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.set_rng_state(self._rng_cpu)
            if self._rng_cuda is not None:
                torch.cuda.set_rng_state(self._rng_cuda, self.device)
            try:
                yield
            finally:
                self._rng_cpu, self._rng_cuda = self._capture_rng()

    # --- training ----------------------------------------------------------------

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch and return its metrics (see :meth:`evaluate`)."""
        if self.done:
            raise RuntimeError(f"all {self.setup.epochs} epochs are already trained")
        x, y = self.data.x_train, self.data.y_train
        order = torch.randperm(self.n_train, generator=self._order).to(self.device)
        self.model.train()
        with self._rng_scope():
            for start in range(0, self.n_train, self.batch_size):
                idx = order[start:start + self.batch_size]
                self._train_step(x[idx], y[idx])
        self._epoch += 1
        return self.evaluate()

    def _train_step(self, xb: Tensor, yb: Tensor) -> None:
        factor = self.schedule.factor(self._step)
        if factor > 0.0 and self._initial_norms is None:
            self._initial_norms = M.weight_norms(self.weights)
        loss = self.loss(self.model(xb), yb, factor).mean()
        if factor > 0.0 and self.reg_lambda > 0.0:
            loss = loss + factor * penalty(self.weights, self.reg_lambda, self.l1_ratio)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._step += 1

    # --- evaluation --------------------------------------------------------------

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Model outputs in eval mode (logits, or one value per row for regression)."""
        self.model.eval()
        return torch.cat([self.model(x[i:i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)])

    def current_factor(self) -> float:
        """The schedule factor of the last step taken (0 before any step)."""
        return self.schedule.factor(self._step - 1) if self._step > 0 else 0.0

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics now: counters, losses, task-kind metrics and weight metrics.

        train_loss / val_loss are the prediction loss in effect on the last step
        (including the study-000 blend at its current factor) without the
        penalty, averaged over all samples of the split.
        """
        d = self.data
        factor = self.current_factor()
        out_train, out_val = self.predict(d.x_train), self.predict(d.x_val)
        train_loss = float(self.loss(out_train, d.y_train, factor).double().mean())
        val_loss = float(self.loss(out_val, d.y_val, factor).double().mean())
        result: dict[str, Any] = {
            "epoch": self._epoch, "step": self._step, "reg_active": int(factor > 0.0),
            "train_loss": train_loss, "val_loss": val_loss, "loss_gap": val_loss - train_loss,
        }
        if d.kind == "classification":
            assert d.n_classes is not None
            result["train_accuracy"] = M.accuracy(out_train.argmax(dim=-1), d.y_train)
            result.update(M.classification_metrics(out_val, d.y_val, d.n_classes))
        else:
            result.update(M.regression_metrics(out_val.reshape(d.y_val.shape), d.y_val))
        result.update(M.weight_metrics(self.weights, self._initial_norms))
        return result

    # --- checkpoints -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically from this epoch boundary.

        A deep copy: ``model.state_dict()`` and the optimizer's buffers alias the
        live tensors, so without it a snapshot kept in memory would silently
        follow the training that continues after it.
        """
        return copy.deepcopy({
            "format": CHECKPOINT_FORMAT,
            "structure": self.setup.structure(),
            "epoch": self._epoch,
            "step": self._step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": self._rng_cpu.clone(),
            "rng_cuda": None if self._rng_cuda is None else self._rng_cuda.clone(),
            "order_rng": self._order.get_state(),
            "initial_norms": None if self._initial_norms is None else list(self._initial_norms),
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the setup's hyperparameters apply from here on."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
        if state["structure"] != self.setup.structure():
            raise ValueError("checkpoint belongs to a different task/model/optimizer: "
                             f"{state['structure']} != {self.setup.structure()}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        apply_hyperparams(self.setup.optimizer, self.optimizer, self.setup.params)
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._rng_cpu = state["rng_cpu"].cpu()
        if self.device.type == "cuda" and state["rng_cuda"] is not None:
            self._rng_cuda = state["rng_cuda"].cpu()
        self._order.set_state(state["order_rng"].cpu())
        norms = state["initial_norms"]
        self._initial_norms = None if norms is None else (float(norms[0]), float(norms[1]))

    def save(self, directory: Path | str) -> Path:
        """Write the checkpoint into ``directory`` (atomically); returns the file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / CHECKPOINT_FILE
        tmp = directory / (CHECKPOINT_FILE + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, target)
        return target

    def restore(self, directory: Path | str) -> None:
        """Load a checkpoint written by :meth:`save` (tensors only: ``weights_only``)."""
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {CHECKPOINT_FILE} in {directory}")
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
