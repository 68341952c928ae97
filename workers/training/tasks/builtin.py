"""The built-in tasks: all offline (bundled with scikit-learn, or synthetic).

Workers may have no network, and a hyperparameter search must not depend on a
download that can change or vanish, so no task here fetches anything.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from search_spaces import catalog
from workers.training.tasks.base import (TaskData, as_features, as_labels, check_options,
                                         split_indices, standardize)

DIGITS_IMAGE = (1, 8, 8)


def longtail_keep(labels: np.ndarray, imbalance_ratio: float) -> np.ndarray:
    """Indices into ``labels`` kept when class c shrinks to ceil(n_c · r^(−c/(K−1))).

    With the 10 digit classes that is r^(−c/9): class 0 keeps everything, class 9
    keeps 1/r of its rows. Rows keep their (already shuffled) order, and the first
    rows of each class are the ones kept, so the subsample is deterministic.
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
    classes = np.unique(labels)
    span = max(1, int(classes.max()))
    keep = np.zeros(len(labels), dtype=bool)
    for c in classes:
        rows = np.flatnonzero(labels == c)
        n_keep = math.ceil(len(rows) * imbalance_ratio ** (-int(c) / span))
        keep[rows[:n_keep]] = True
    return np.flatnonzero(keep)


def bundled_csv(name: str, delimiter: str | None = None) -> np.ndarray:
    """A data file that ships with scikit-learn, read without importing scikit-learn.

    ``import sklearn.datasets`` costs a fresh trial process about 1.3 s, more than
    half of its imports (bench B1), to read a 60 kB file. The files are read as
    scikit-learn's own loaders read them (``np.loadtxt`` of the gunzipped text);
    should a future release move them, its loaders are used instead.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package, runs none of it
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "datasets" / "data" / name if locations else None
    if path is None or not path.is_file():
        from importlib import resources

        path = resources.files("sklearn.datasets.data") / name  # type: ignore[assignment]
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        return np.loadtxt(text, delimiter=delimiter)


@dataclass(frozen=True)
class DigitsTask:
    """scikit-learn's 8×8 digits, pixels scaled to [0, 1] by /16.

    ``longtail``: the training split is subsampled geometrically per class
    (option ``imbalance_ratio``, default 10); validation stays balanced so that
    val_accuracy and macro F1 measure what a long tail does to the rare classes.
    """

    name: str = "digits"
    longtail: bool = False

    def load(self, options: Mapping[str, Any], data_root: Path | None = None) -> TaskData:
        allowed = {"imbalance_ratio": float} if self.longtail else {}
        opts = check_options(self.name, options, allowed)
        data = bundled_csv("digits.csv.gz", delimiter=",")  # sklearn's load_digits()
        x = data[:, :-1].astype(np.float64) / 16.0
        y = data[:, -1].astype(np.int64)
        train, val = split_indices(len(x), catalog.TASKS[self.name].val_fraction,
                                   opts.get("split_seed", 0))
        if self.longtail:
            train = train[longtail_keep(y[train], opts.get("imbalance_ratio", 10.0))]
        return TaskData("classification", as_features(x[train]), as_labels(y[train]),
                        as_features(x[val]), as_labels(y[val]), n_classes=10,
                        image_shape=DIGITS_IMAGE)


#: Fixed so every trial, worker and machine sees the same synthetic problem.
OUTLIER_DATA_SEED = 20_000


def make_regression_outliers(n_samples: int, n_features: int, outlier_fraction: float,
                             split_seed: int = 0, val_fraction: float = 0.25
                             ) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_val, y_val, true_coef) before feature standardization.

    y = x·β + 0.5 + 0.5·t₃ noise, with x ~ N(0, 1) and fixed β (a third of them
    exactly 0, so L1's sparsity is observable). After the split, a
    ``outlier_fraction`` share of the *training* targets get a gross offset of
    ±(15..30) — many noise standard deviations — while validation stays clean,
    so val_rmse measures how well a loss ignored the outliers.
    """
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    if not 0.0 <= outlier_fraction < 0.5:
        raise ValueError(f"outlier_fraction must be in [0, 0.5), got {outlier_fraction}")
    rng = np.random.default_rng(OUTLIER_DATA_SEED)
    coef = np.round(rng.normal(0.0, 2.0, n_features), 2)
    coef[rng.permutation(n_features)[: n_features // 3]] = 0.0
    x = rng.normal(0.0, 1.0, (n_samples, n_features))
    y = x @ coef + 0.5 + 0.5 * rng.standard_t(df=3, size=n_samples)
    train, val = split_indices(n_samples, val_fraction, split_seed)
    y_train = y[train].copy()
    n_out = int(round(outlier_fraction * len(train)))
    rows = rng.choice(len(train), size=n_out, replace=False)
    y_train[rows] += rng.choice([-1.0, 1.0], n_out) * rng.uniform(15.0, 30.0, n_out)
    return x[train], y_train, x[val], y[val], coef


@dataclass(frozen=True)
class RegressionOutliersTask:
    """Synthetic linear regression: heavy-tailed noise plus ~5% gross training outliers.

    Options: ``n_features`` (default 20), ``outlier_fraction`` (default 0.05).
    Features are standardized with training statistics; the target keeps its
    generated units so val_rmse is comparable to the noise level (≈0.87).
    """

    name: str = "regression-outliers"

    def load(self, options: Mapping[str, Any], data_root: Path | None = None) -> TaskData:
        opts = check_options(self.name, options,
                             {"n_features": int, "outlier_fraction": float})
        info = catalog.TASKS[self.name]
        assert info.n_samples is not None
        x_tr, y_tr, x_va, y_va, _ = make_regression_outliers(
            info.n_samples, opts.get("n_features", 20), opts.get("outlier_fraction", 0.05),
            opts.get("split_seed", 0), info.val_fraction)
        x_tr, x_va = standardize(x_tr, x_va)
        return TaskData("regression", as_features(x_tr), as_features(y_tr),
                        as_features(x_va), as_features(y_va))


@dataclass(frozen=True)
class DiabetesTask:
    """scikit-learn's diabetes progression data; features and target standardized.

    Standardizing the target (with training statistics) makes val_rmse read as a
    fraction of the target's spread and keeps lr ranges comparable to other tasks.
    """

    name: str = "diabetes"

    def load(self, options: Mapping[str, Any], data_root: Path | None = None) -> TaskData:
        opts = check_options(self.name, options, {})
        # sklearn's load_diabetes(return_X_y=True, scaled=False)
        x, y = bundled_csv("diabetes_data_raw.csv.gz"), bundled_csv("diabetes_target.csv.gz")
        train, val = split_indices(len(x), catalog.TASKS[self.name].val_fraction,
                                   opts.get("split_seed", 0))
        x_tr, x_va = standardize(x[train], x[val])
        y_tr, y_va = standardize(y[train], y[val])
        return TaskData("regression", as_features(x_tr), as_features(y_tr),
                        as_features(x_va), as_features(y_va))
