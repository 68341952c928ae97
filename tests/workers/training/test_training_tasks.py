"""Built-in tasks and user tables: split sizes, scaling, and what each task promises."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from search_spaces import catalog
from workers.training.tasks import load_task
from workers.training.tasks.builtin import longtail_keep, make_regression_outliers

FIXED = sorted(n for n, info in catalog.TASKS.items() if info.n_samples is not None)


@pytest.mark.parametrize("name", FIXED)
def test_split_sizes_match_catalog(name: str) -> None:
    info = catalog.TASKS[name]
    data = load_task(name).load({}, None)
    n_train, n_val = catalog.split_sizes(info.n_samples, info.val_fraction)
    if name == "digits-longtail":
        assert len(data.x_train) <= info.train_size_bound()
        assert len(data.x_train) < n_train  # the tail really was cut
    else:
        assert len(data.x_train) == info.train_size_bound() == n_train
    assert len(data.x_val) == n_val
    assert data.x_train.dtype == torch.float32 and data.x_train.dim() == 2


@pytest.mark.parametrize("name", FIXED)
def test_tasks_are_deterministic_and_split_seed_changes_split(name: str) -> None:
    a, b = load_task(name).load({}, None), load_task(name).load({}, None)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    c = load_task(name).load({"split_seed": 1}, None)
    assert not torch.equal(a.x_val, c.x_val)


def test_digits_pixels_scaled_and_image_shaped() -> None:
    data = load_task("digits").load({}, None)
    assert data.x_train.min() >= 0 and data.x_train.max() == 1.0
    assert data.image_shape == (1, 8, 8) and data.in_features == 64 and data.n_classes == 10


@pytest.mark.parametrize("ratio", [10.0, 4.0, 1.0])
def test_longtail_subsamples_train_geometrically_and_keeps_val(ratio: float) -> None:
    full = load_task("digits").load({}, None)
    tail = load_task("digits-longtail").load({"imbalance_ratio": ratio}, None)
    assert torch.equal(full.x_val, tail.x_val) and torch.equal(full.y_val, tail.y_val)
    full_counts = torch.bincount(full.y_train, minlength=10).tolist()
    tail_counts = torch.bincount(tail.y_train, minlength=10).tolist()
    assert tail_counts == [math.ceil(n * ratio ** (-c / 9)) for c, n in enumerate(full_counts)]
    if ratio == 1.0:
        assert torch.equal(full.x_train, tail.x_train)


def test_longtail_keep_refuses_ratio_below_one() -> None:
    with pytest.raises(ValueError):
        longtail_keep(np.array([0, 1, 1]), 0.5)


def test_regression_outliers_only_in_train_targets() -> None:
    x_tr, y_tr, x_va, y_va, coef = make_regression_outliers(1200, 20, 0.05)
    resid_tr = np.abs(y_tr - x_tr @ coef - 0.5)
    resid_va = np.abs(y_va - x_va @ coef - 0.5)
    assert (resid_tr > 12).sum() == round(0.05 * 900)
    assert resid_va.max() < 12
    assert (coef == 0).sum() == 20 // 3


def test_regression_outliers_options_and_standardized_features() -> None:
    data = load_task("regression-outliers").load({"n_features": 7, "outlier_fraction": 0.0}, None)
    assert data.in_features == 7 and data.n_outputs == 1
    mean, std = data.x_train.double().mean(0), data.x_train.double().std(0, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(7, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(7, dtype=torch.float64), atol=1e-5, rtol=0)
    assert data.y_train.abs().max() < 15  # no gross outliers asked for


def test_diabetes_standardizes_features_and_target_with_train_stats() -> None:
    data = load_task("diabetes").load({}, None)
    assert abs(float(data.y_train.double().mean())) < 1e-5
    assert float(data.y_train.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(data.y_val.double().mean())) > 1e-4  # val uses train stats, not its own


@pytest.mark.parametrize("options,match", [
    ({"imbalance_ratio": 3.0}, "no option"),
    ({"split_seed": "x"}, "must be int"),
    ({"split_seed": True}, "must be int"),
])
def test_unknown_or_mistyped_options_refused(options, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_task("digits").load(options, None)


# --- user tables ---------------------------------------------------------------------

def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"f1": rng.normal(5, 3, n), "f2": rng.integers(0, 9, n),
                         "flag": rng.integers(0, 2, n).astype(bool),
                         "label": rng.choice(["cat", "dog", "eel"], n),
                         "value": rng.normal(0, 1, n)})


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_classification_label_encoded(tmp_path: Path, suffix: str) -> None:
    frame = _frame().drop(columns=["value"])
    path = tmp_path / f"t{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    data = load_task("table").load({"path": path.name, "target": "label"}, tmp_path)
    n_train, n_val = catalog.split_sizes(50, catalog.TASKS["table"].val_fraction)
    assert (len(data.x_train), len(data.x_val)) == (n_train, n_val)
    assert data.kind == "classification" and data.n_classes == 3 and data.in_features == 3
    labels = set(torch.cat([data.y_train, data.y_val]).tolist())
    assert labels == {0, 1, 2}
    expected = {"cat": 0, "dog": 1, "eel": 2}  # sorted order
    assert sorted(torch.cat([data.y_train, data.y_val]).tolist()) == sorted(
        expected[v] for v in frame["label"])


def test_table_regression(tmp_path: Path) -> None:
    _frame().drop(columns=["label"]).to_csv(tmp_path / "r.csv", index=False)
    data = load_task("table").load({"path": "r.csv", "target": "value", "kind": "regression"},
                                   tmp_path)
    assert data.kind == "regression" and data.y_train.dtype == torch.float32
    assert abs(float(data.x_train.double().mean(0)[0])) < 1e-5  # standardized with train stats


@pytest.mark.parametrize("frame,options,match", [
    (_frame(), {"target": "value"}, "non-numeric feature columns \\['label'\\]"),
    (_frame().drop(columns=["label"]), {"target": "nope"}, "no column 'nope'"),
    (_frame().drop(columns=["label"]).assign(f1=np.nan), {"target": "value"}, "missing values"),
    (_frame()[["label"]], {"target": "label"}, "no feature columns"),
    (_frame().drop(columns=["value"]), {"target": "label", "kind": "regression"}, "non-numeric|numeric"),
    (_frame().drop(columns=["label"]), {"target": "value", "kind": "ranking"}, "kind must be"),
    (_frame().drop(columns=["label"]).assign(value=1), {"target": "value"}, "fewer than 2 classes"),
])
def test_table_refusals(tmp_path: Path, frame, options, match) -> None:
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=match):
        load_task("table").load({"path": "bad.csv", **options}, tmp_path)


def test_table_requires_path_target_and_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task_options.path"):
        load_task("table").load({"target": "x"}, tmp_path)
    with pytest.raises(ValueError, match="REGTUNE_DATA_ROOT"):
        load_task("table").load({"path": "a.csv", "target": "x"}, None)
    with pytest.raises(ValueError, match="outside|'\\.\\.'"):
        load_task("table").load({"path": "../a.csv", "target": "x"}, tmp_path)


def test_bundled_files_read_as_scikit_learn_reads_them() -> None:
    from sklearn.datasets import load_diabetes, load_digits

    from workers.training.tasks.builtin import bundled_csv

    digits = load_digits()
    data = bundled_csv("digits.csv.gz", delimiter=",")
    assert np.array_equal(data[:, :-1], digits.data)
    assert np.array_equal(data[:, -1].astype(np.int64), digits.target)
    x, y = load_diabetes(return_X_y=True, scaled=False)
    assert np.array_equal(bundled_csv("diabetes_data_raw.csv.gz"), x)
    assert np.array_equal(bundled_csv("diabetes_target.csv.gz"), y)


def test_builtin_tasks_do_not_import_scikit_learn() -> None:
    """A fresh trial process loads its data without paying for sklearn's imports."""
    import subprocess
    import sys

    code = ("import sys\nfrom workers.training.tasks import load_task\n"
            "for name in ('digits', 'digits-longtail', 'diabetes', 'regression-outliers'):\n"
            "    load_task(name).load({}, None)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
