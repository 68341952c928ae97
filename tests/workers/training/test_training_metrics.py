"""Every metric against scikit-learn (or an independent loop) on small arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from workers.training import metrics as M

labels = st.lists(st.integers(0, 3), min_size=1, max_size=40)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_classification_metrics_match_sklearn(data) -> None:
    y_true = data.draw(labels)
    y_pred = data.draw(st.lists(st.integers(0, 3), min_size=len(y_true), max_size=len(y_true)))
    t, p = torch.tensor(y_true), torch.tensor(y_pred)
    kw = {"labels": list(range(4)), "average": "macro", "zero_division": 0}
    assert M.accuracy(p, t) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    precision, recall, f1 = M.macro_precision_recall_f1(p, t, 4)
    assert precision == pytest.approx(skm.precision_score(y_true, y_pred, **kw))
    assert recall == pytest.approx(skm.recall_score(y_true, y_pred, **kw))
    assert f1 == pytest.approx(skm.f1_score(y_true, y_pred, **kw))


def test_classification_metrics_from_logits() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.5]])
    target = torch.tensor([0, 1, 1, 2])
    out = M.classification_metrics(logits, target, 3)
    pred = [0, 1, 2, 0]
    assert out["val_accuracy"] == pytest.approx(0.5)
    assert out["val_f1"] == pytest.approx(skm.f1_score(target.tolist(), pred, average="macro"))
    assert set(out) == {"val_accuracy", "val_precision", "val_recall", "val_f1", "val_ece"}


def _ece_loop(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs((pred[inside] == target[inside]).mean() - conf[inside].mean())
    return float(total)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60), st.floats(0.1, 8.0))
def test_ece_matches_binned_definition(seed: int, n: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    probs = torch.softmax(torch.tensor(rng.normal(0, scale, (n, 5))), -1).numpy()
    target = rng.integers(0, 5, n)
    got = M.expected_calibration_error(torch.tensor(probs), torch.tensor(target))
    assert got == pytest.approx(_ece_loop(probs, target), abs=1e-12)
    assert 0.0 <= got <= 1.0


def test_ece_known_values() -> None:
    # Always confident 0.9 and right 90% of the time -> calibrated.
    probs = torch.tensor([[0.9, 0.1]] * 10, dtype=torch.float64)
    target = torch.tensor([0] * 9 + [1])
    assert M.expected_calibration_error(probs, target) == pytest.approx(0.0, abs=1e-12)
    # Confident 0.9 and always wrong -> ECE 0.9.
    assert M.expected_calibration_error(probs, torch.ones(10, dtype=torch.long)) == pytest.approx(0.9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), min_size=2, max_size=30))
def test_regression_metrics_match_sklearn(pairs) -> None:
    y_true = np.array([a for a, _ in pairs])
    y_pred = np.array([b for _, b in pairs])
    t, p = torch.tensor(y_true), torch.tensor(y_pred)
    assert M.mae(p, t) == pytest.approx(skm.mean_absolute_error(y_true, y_pred), abs=1e-9)
    assert M.rmse(p, t) == pytest.approx(math.sqrt(skm.mean_squared_error(y_true, y_pred)),
                                         abs=1e-9)
    assert M.r2(p, t) == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-9, abs=1e-9)


def test_r2_constant_target_follows_sklearn() -> None:
    t = torch.tensor([2.0, 2.0, 2.0])
    assert M.r2(t.clone(), t) == skm.r2_score(t.numpy(), t.numpy()) == 1.0
    assert M.r2(torch.tensor([1.0, 2.0, 3.0]), t) == skm.r2_score(t.numpy(), [1, 2, 3]) == 0.0


def test_regression_metrics_accept_column_predictions() -> None:
    out = M.regression_metrics(torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([1.0, 2.0, 3.0]))
    assert out == pytest.approx({"val_mae": 1 / 3, "val_rmse": math.sqrt(1 / 3),
                                 "val_r2": skm.r2_score([1, 2, 3], [1, 2, 4])})


def test_weight_metrics() -> None:
    ws = [torch.tensor([[3.0, -4.0], [0.0, 0.0005]]), torch.tensor([0.5])]
    out = M.weight_metrics(ws, None)
    assert out["weight_l1"] == pytest.approx(7.5005)
    assert out["weight_l2"] == pytest.approx(math.sqrt(9 + 16 + 0.0005 ** 2 + 0.25))
    assert out["weight_l1_rel"] == out["weight_l2_rel"] == 1.0
    assert out["weight_sparsity"] == pytest.approx(2 / 5)
    rel = M.weight_metrics(ws, (15.001, out["weight_l2"] * 4))
    assert rel["weight_l1_rel"] == pytest.approx(0.5) and rel["weight_l2_rel"] == pytest.approx(0.25)
    assert M.weight_metrics(ws, (0.0, 0.0))["weight_l1_rel"] == 1.0


def test_diverged_logits_give_nan_not_an_exception() -> None:
    out = M.classification_metrics(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 2, 0]), 3)
    assert math.isnan(out["val_ece"])
    assert set(out) == {"val_accuracy", "val_precision", "val_recall", "val_f1", "val_ece"}
