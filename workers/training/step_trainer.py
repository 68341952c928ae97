"""Step-level training: a :class:`Trainer` driven by optimizer steps, forked mid-epoch.

For shared prefixes (:mod:`workers.training.prefix`, whose docstring says which
parameters act only from the start step on: :func:`prefix_key`): a trial forks off the
unregularized trunk at its own start step, which can fall inside an epoch. The
loop drives a ``Trainer``'s own step, RNG scope and evaluation, and adds only
what a mid-epoch fork needs: the epoch's data permutation and the position in it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from workers.training.losses import PredictionLoss
from workers.training.optimizers import apply_hyperparams
from workers.training.schedules import RegSchedule
from workers.training.setup import TrialSetup
from workers.training.trainer import Trainer

SNAPSHOT_FILE = "snapshot.pt"
SNAPSHOT_FORMAT = 1
#: Parameters that act only from the start step on (see the module docstring).
POST_START_PARAMS = frozenset({"reg_start_step", "reg_ramp_steps", "reg_lambda", "l1_ratio",
                               "smooth_l1_weight"})


def prefix_key(setup: TrialSetup) -> tuple[Any, ...]:
    """What two setups must share to train identically before their start steps."""
    params = {k: v for k, v in setup.params.items() if k not in POST_START_PARAMS}
    loss = str(setup.params["loss"])
    if loss != "focal":
        params.pop("focal_gamma", None)
        params.pop("focal_alpha", None)
    if loss != "smooth_l1":
        params.pop("huber_delta", None)
    if setup.optimizer == "adam":
        params.pop("momentum", None)
    return (setup.task, tuple(sorted((k, repr(v)) for k, v in setup.task_options.items())),
            setup.kind, setup.model, tuple(setup.hidden_sizes), tuple(setup.channels),
            setup.optimizer, setup.epochs, setup.seed,
            str(setup.data_root) if setup.data_root is not None else None,
            tuple(sorted((k, repr(v)) for k, v in params.items())))


@dataclass
class Snapshot:
    """A trainer's complete state at any step: ``Trainer.state_dict()`` plus the epoch cursor."""

    trainer_state: dict[str, Any]
    order: Tensor | None  # this epoch's data permutation (None at an epoch boundary)
    position: int  # rows of ``order`` already trained on

    def save(self, directory: Path | str) -> Path:
        """Write ``directory/snapshot.pt`` atomically; returns the file."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / SNAPSHOT_FILE
        tmp = directory / (SNAPSHOT_FILE + ".tmp")
        torch.save({"format": SNAPSHOT_FORMAT, "trainer": self.trainer_state,
                    "order": None if self.order is None else self.order.cpu(),
                    "position": self.position}, tmp)
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, directory: Path | str) -> "Snapshot":
        path = Path(directory) / SNAPSHOT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {SNAPSHOT_FILE} in {directory}")
        data = torch.load(path, map_location="cpu", weights_only=True)
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format {data.get('format')!r}")
        return cls(trainer_state=data["trainer"], order=data["order"],
                   position=int(data["position"]))


class StepTrainer:
    """A :class:`Trainer` driven by optimizer steps instead of epochs.

    ``run_to(s)`` trains until ``s`` steps are completed, possibly stopping
    mid-epoch; at every epoch boundary it evaluates exactly as
    ``Trainer.train_epoch()`` does. ``snapshot()`` / :meth:`fork` continue from
    any step bit-identically (a test checks that against an unbroken run).
    """

    def __init__(self, setup: TrialSetup, device: torch.device | None = None, *,
                 trainer: Trainer | None = None) -> None:
        self.trainer = trainer if trainer is not None else Trainer(setup, device)
        self.setup = self.trainer.setup
        self._order: Tensor | None = None
        self._position = 0
        #: Work this object did: optimizer steps and full evaluations.
        self.steps_run = 0
        self.evaluations = 0

    @classmethod
    def fork(cls, setup: TrialSetup, snapshot: Snapshot,
             device: torch.device | None = None) -> "StepTrainer":
        """A trainer for ``setup`` continuing from ``snapshot`` (its hyperparameters from now)."""
        runner = cls(setup, device)
        runner.trainer.load_state_dict(snapshot.trainer_state)
        runner._order = None if snapshot.order is None else snapshot.order.to(
            runner.trainer.device)
        runner._position = snapshot.position
        return runner

    def branch(self, setup: TrialSetup) -> "StepTrainer":
        """A trainer for ``setup`` continuing from this one's current state, in memory.

        The same state as ``fork(setup, self.snapshot())`` without building a new
        ``Trainer`` (which would load the task's data again): a deep copy that
        shares the read-only data tensors, with the attributes a ``Trainer``
        derives from the post-start parameters — and only those, since
        :func:`prefix_key` makes every other parameter equal — rebuilt from
        ``setup``, and its lr/momentum re-applied as ``load_state_dict`` does.
        """
        parent = self.trainer
        if prefix_key(setup) != prefix_key(parent.setup):
            raise ValueError("a branch must agree with its trunk on everything but the "
                             "post-start parameters (prefix_key)")
        child = copy.deepcopy(parent, {id(parent.data): parent.data})
        child.setup = setup
        child.schedule = RegSchedule.from_params(setup.params)
        child.loss = PredictionLoss.build(setup.kind, setup.params)
        child.reg_lambda = float(setup.params["reg_lambda"])
        child.l1_ratio = float(setup.params["l1_ratio"])
        apply_hyperparams(setup.optimizer, child.optimizer, setup.params)
        runner = StepTrainer(setup, trainer=child)
        runner._order = None if self._order is None else self._order.clone()
        runner._position = self._position
        return runner

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def epoch(self) -> int:
        return self.trainer.epoch

    @property
    def total_steps(self) -> int:
        return self.trainer.steps_per_epoch * self.setup.epochs

    @property
    def done(self) -> bool:
        return self.trainer.done

    def snapshot(self) -> Snapshot:
        """The state now (a deep copy: training on does not change it)."""
        return Snapshot(trainer_state=self.trainer.state_dict(),
                        order=None if self._order is None else self._order.clone(),
                        position=self._position)

    def run_to(self, target_step: int,
               on_epoch: Callable[[dict[str, float]], "bool | None"] | None = None
               ) -> list[dict[str, float]]:
        """Train until ``target_step`` steps are done (capped at the last step).

        Returns the metrics of the epochs completed on the way; ``on_epoch`` sees
        each as it is produced and may return ``False`` to stop right there.
        """
        t = self.trainer
        target = min(int(target_step), self.total_steps)
        x, y = t.data.x_train, t.data.y_train
        produced = []
        while t.step < target:
            if self._order is None:  # an epoch starts: Trainer.train_epoch's first line
                self._order = torch.randperm(t.n_train, generator=t._order).to(t.device)
                self._position = 0
            left_in_epoch = -(-(t.n_train - self._position) // t.batch_size)
            n = min(target - t.step, left_in_epoch)
            t.model.train()
            with t._rng_scope():
                for _ in range(n):
                    idx = self._order[self._position:self._position + t.batch_size]
                    t._train_step(x[idx], y[idx])
                    self._position += t.batch_size
            self.steps_run += n
            if self._position >= t.n_train:  # the epoch is complete
                self._order = None
                self._position = 0
                t._epoch += 1
                metrics = t.evaluate()
                self.evaluations += 1
                produced.append(metrics)
                if on_epoch is not None and on_epoch(metrics) is False:
                    break
        return produced
