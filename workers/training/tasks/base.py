"""What a task is: the data contract every built-in and plugin task fulfils.

A task turns its options into a :class:`TaskData` — train and validation
tensors, already split and scaled. Splitting and scaling live with the task
(not the trainer) because only the task knows what is legitimate: e.g.
digits-longtail subsamples the *training* split only and regression-outliers
corrupts only the *training* targets, both of which must happen after the split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from search_spaces import catalog

KINDS = ("classification", "regression")


@dataclass(frozen=True)
class TaskData:
    """Split, scaled data. Features are flat float32 ``(N, F)``; labels int64, targets float32."""

    kind: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    n_classes: int | None = None  # classification only
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) if the rows are images

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("x_train", "x_val"):
            x = getattr(self, name)
            if x.dim() != 2 or x.dtype != torch.float32:
                raise ValueError(f"{name} must be a 2-d float32 tensor, "
                                 f"got {x.dtype} {tuple(x.shape)}")
        if self.x_train.shape[1] != self.x_val.shape[1]:
            raise ValueError("train and validation features differ in width")
        if len(self.x_train) != len(self.y_train) or len(self.x_val) != len(self.y_val):
            raise ValueError("features and targets differ in length")
        if len(self.x_train) == 0 or len(self.x_val) == 0:
            raise ValueError("a task needs at least one training and one validation row")
        if self.kind == "classification":
            if self.n_classes is None or self.n_classes < 2:
                raise ValueError("a classification task needs n_classes >= 2")
            if self.y_train.dtype != torch.int64 or self.y_val.dtype != torch.int64:
                raise ValueError("classification labels must be int64")
        elif self.y_train.dtype != torch.float32 or self.y_val.dtype != torch.float32:
            raise ValueError("regression targets must be float32")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != self.x_train.shape[1]:
            raise ValueError(f"image_shape {self.image_shape} does not match "
                             f"{self.x_train.shape[1]} features")

    @property
    def in_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self.n_classes) if self.kind == "classification" else 1  # type: ignore[arg-type]

    def to(self, device: torch.device) -> "TaskData":
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_val=self.x_val.to(device), y_val=self.y_val.to(device))


@runtime_checkable
class Task(Protocol):
    """A named source of :class:`TaskData`; plugins return an object with this shape."""

    name: str

    def load(self, options: Mapping[str, Any], data_root: Path | None) -> TaskData:
        """Build the split data from the spec's ``task_options``."""
        ...


#: Every task accepts this option: the seed of the train/validation permutation.
#: It is a task option, not ``train.seed``, so trials that vary the training seed
#: are still validated on the same rows.
COMMON_OPTIONS: dict[str, type] = {"split_seed": int}


def check_options(task: str, options: Mapping[str, Any],
                  allowed: Mapping[str, type]) -> dict[str, Any]:
    """Options with their types checked; an unknown option is refused, not ignored."""
    known = {**COMMON_OPTIONS, **allowed}
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"task {task!r} has no option {key!r}; known: {sorted(known)}")
        want = known[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool) and want is not bool:
            raise ValueError(f"task option {key!r} must be {want.__name__}, got {value!r}")
        out[key] = value
    return out


def split_indices(n_samples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation cut at ``catalog.split_sizes`` — the sizes validation assumes."""
    n_train, _ = catalog.split_sizes(n_samples, val_fraction)
    perm = np.random.default_rng(seed).permutation(n_samples)
    return perm[:n_train], perm[n_train:]


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale by the *training* mean/std only (a constant column keeps std 1)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def as_features(x: np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)


def as_labels(y: np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(y), dtype=torch.int64)
