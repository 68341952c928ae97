"""Names the service accepts, and the static facts validation needs about them.

Why this lives here and not in ``workers/``: the API process validates specs but
must never import torch or the training code. So the *names* of built-in tasks,
losses, metrics, models, algorithms and schedulers — and the few facts about them
that validation needs (task kind, dataset size, a metric's natural direction) —
are declared once here. ``workers/`` registries implement exactly these names; a
test in ``tests/workers`` asserts that the two agree, so they cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Literal

TaskKind = Literal["classification", "regression"]

#: Entry-point group through which installed packages register extra tasks.
#: A spec names a registered task by its entry-point *name*; it never carries an
#: import path, so nothing a user sends selects code to import.
TASK_ENTRY_POINT_GROUP = "regtune.tasks"


@dataclass(frozen=True)
class TaskInfo:
    """What validation must know about a built-in task without loading it."""

    name: str
    kind: TaskKind
    n_samples: int | None  # None: depends on user data, known only at run time
    val_fraction: float = 0.2
    image: bool = False  # a (1, 8, 8) image input, so the CNN applies
    doc: str = ""

    def train_size_bound(self) -> int | None:
        """Upper bound on the training-set size (exact for fixed datasets)."""
        if self.n_samples is None:
            return None
        return split_sizes(self.n_samples, self.val_fraction)[0]


def split_sizes(n_samples: int, val_fraction: float) -> tuple[int, int]:
    """(n_train, n_val) for a dataset: the validation share is rounded up.

    The workers build their splits with this same function, so the step counts
    validation computes are the step counts training runs.
    """
    n_val = max(1, math.ceil(n_samples * val_fraction))
    return n_samples - n_val, n_val


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one epoch: the last, short batch is kept."""
    return math.ceil(n_train / batch_size)


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("digits", "classification", 1797, image=True,
                 doc="scikit-learn's bundled 8x8 handwritten digits, 10 classes"),
        TaskInfo("digits-longtail", "classification", 1797, image=True,
                 doc="digits with classes subsampled geometrically (option imbalance_ratio); "
                     "the training split only, validation stays balanced"),
        TaskInfo("regression-outliers", "regression", 1200, val_fraction=0.25,
                 doc="synthetic linear regression with heavy-tailed noise and gross outliers"),
        TaskInfo("diabetes", "regression", 442,
                 doc="scikit-learn's bundled diabetes progression data"),
        TaskInfo("table", "classification", None,
                 doc="a CSV or Parquet table under the data root (options: path, target, kind)"),
    )
}

# Loss name -> the task kinds it applies to. Classification losses l1/mse act on
# softmax probabilities against one-hot targets, to rerun study 002.
LOSSES: dict[str, frozenset[str]] = {
    "cross_entropy": frozenset({"classification"}),
    "focal": frozenset({"classification"}),
    "l1": frozenset({"classification", "regression"}),
    "mse": frozenset({"classification", "regression"}),
    "smooth_l1": frozenset({"classification", "regression"}),
}

MODELS: dict[str, frozenset[str]] = {
    "linear": frozenset({"classification", "regression"}),
    "mlp": frozenset({"classification", "regression"}),
    "cnn": frozenset({"classification"}),  # image tasks only, checked separately
}

DEFAULT_MODEL: dict[str, str] = {"classification": "mlp", "regression": "linear"}


@dataclass(frozen=True)
class MetricInfo:
    """A metric the trainer reports each epoch."""

    name: str
    mode: Literal["min", "max"]  # the direction in which it is better
    kinds: frozenset[str]
    loss_scaled: bool = False  # its scale depends on the loss's own parameters


_BOTH = frozenset({"classification", "regression"})
_CLS = frozenset({"classification"})
_REG = frozenset({"regression"})

METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("train_loss", "min", _BOTH, loss_scaled=True),
        MetricInfo("val_loss", "min", _BOTH, loss_scaled=True),
        MetricInfo("loss_gap", "min", _BOTH, loss_scaled=True),
        MetricInfo("val_accuracy", "max", _CLS),
        MetricInfo("train_accuracy", "max", _CLS),
        MetricInfo("val_precision", "max", _CLS),
        MetricInfo("val_recall", "max", _CLS),
        MetricInfo("val_f1", "max", _CLS),
        MetricInfo("val_ece", "min", _CLS),
        MetricInfo("val_mae", "min", _REG),
        MetricInfo("val_rmse", "min", _REG),
        MetricInfo("val_r2", "max", _REG),
        MetricInfo("weight_l1", "min", _BOTH),
        MetricInfo("weight_l2", "min", _BOTH),
        MetricInfo("weight_l1_rel", "min", _BOTH),
        MetricInfo("weight_l2_rel", "min", _BOTH),
        MetricInfo("weight_sparsity", "max", _BOTH),
    )
}

#: Search algorithms with an implementation in workers/tune/algorithms.py.
ALGORITHMS: tuple[str, ...] = ("tpe", "random", "grid", "cmaes", "qmc", "gp", "nsga2", "pbt",
                                "pb2")
#: Algorithms that change hyperparameters during training; they schedule trials themselves.
POPULATION_ALGORITHMS: tuple[str, ...] = ("pbt", "pb2")
#: Algorithms that can optimise several objectives at once.
MULTI_OBJECTIVE_ALGORITHMS: tuple[str, ...] = ("tpe", "random", "grid", "qmc", "gp", "nsga2")
#: Trial schedulers (early stopping) with an implementation in workers/tune/schedulers.py.
SCHEDULERS: tuple[str, ...] = ("asha", "hyperband", "median", "none")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


@lru_cache(maxsize=1)
def plugin_task_names() -> frozenset[str]:
    """Names registered by installed packages; read from metadata, nothing imported."""
    return frozenset(ep.name for ep in entry_points(group=TASK_ENTRY_POINT_GROUP))


def task_names() -> frozenset[str]:
    return frozenset(TASKS) | plugin_task_names()
