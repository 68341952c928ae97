"""Per-epoch metrics, as pure functions of tensors.

Pure so that each can be checked against scikit-learn on a handful of numbers,
and so the trainer's only job is to gather outputs. Everything is computed in
float64 and returned as a Python float: the values go to Ray, Optuna and MLflow,
and a float32 rounding difference must not reorder two trials.

Conventions (chosen to match scikit-learn, which the tests compare against):

* precision / recall / F1 are *macro* averages over all K classes of the task
  (``labels=range(K)``), a class never predicted has precision 0
  (``zero_division=0``), and macro F1 is the mean of per-class F1 scores — not
  the harmonic mean of macro precision and macro recall.
* ECE uses 15 equal-width confidence bins over (0, 1] with the top-class
  probability as confidence: Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|.
* R² = 1 − SS_res/SS_tot; with a constant target it is 1.0 for a perfect fit
  and 0.0 otherwise (scikit-learn's ``force_finite``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

ECE_BINS = 15
SPARSITY_THRESHOLD = 1e-3


def accuracy(pred: Tensor, target: Tensor) -> float:
    """Share of predicted labels equal to the target labels."""
    return float((pred == target).double().mean())


def macro_precision_recall_f1(pred: Tensor, target: Tensor,
                              n_classes: int) -> tuple[float, float, float]:
    """Macro-averaged (precision, recall, F1) over classes 0..n_classes-1."""
    idx = target.long() * n_classes + pred.long()
    confusion = torch.bincount(idx, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes).double()  # [true, predicted]
    tp = confusion.diagonal()
    predicted = confusion.sum(dim=0)
    actual = confusion.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300),
                     torch.zeros_like(tp))
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence, equal-width bins, bin b = (b/n, (b+1)/n]."""
    probs = probs.double()
    confidence, pred = probs.max(dim=-1)
    if not bool(torch.isfinite(confidence).all()):
        # A diverged model: report NaN (the searcher's problem to rank), don't crash
        # the trial in bincount on a NaN-derived index.
        return math.nan
    correct = (pred == target).double()
    # ceil(c·n) − 1 puts c in (b/n, (b+1)/n]; c = 0 cannot occur for a max of a
    # softmax over K ≥ 1 classes, but is clamped into the first bin regardless.
    bins = (torch.ceil(confidence * n_bins) - 1).clamp(0, n_bins - 1).long()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((conf_sum - acc_sum).abs().sum() / max(1, confidence.numel()))


def mae(pred: Tensor, target: Tensor) -> float:
    return float((pred.double().reshape(target.shape) - target.double()).abs().mean())


def rmse(pred: Tensor, target: Tensor) -> float:
    diff = pred.double().reshape(target.shape) - target.double()
    return math.sqrt(float((diff * diff).mean()))


def r2(pred: Tensor, target: Tensor) -> float:
    y = target.double()
    ss_res = float(((y - pred.double().reshape(y.shape)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def classification_metrics(logits: Tensor, target: Tensor, n_classes: int) -> dict[str, float]:
    """val_* metrics of a classifier from its validation logits."""
    probs = torch.softmax(logits.double(), dim=-1)
    pred = probs.argmax(dim=-1)
    precision, recall, f1 = macro_precision_recall_f1(pred, target, n_classes)
    return {
        "val_accuracy": accuracy(pred, target),
        "val_precision": precision,
        "val_recall": recall,
        "val_f1": f1,
        "val_ece": expected_calibration_error(probs, target),
    }


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """val_* metrics of a regressor, in the units of the (possibly standardized) target."""
    return {"val_mae": mae(pred, target), "val_rmse": rmse(pred, target),
            "val_r2": r2(pred, target)}


def weight_norms(weights: Sequence[Tensor]) -> tuple[float, float]:
    """(‖w‖₁, ‖w‖₂) of all ``weights`` taken as one vector."""
    with torch.no_grad():
        l1 = sum(float(w.detach().double().abs().sum()) for w in weights)
        sq = sum(float(w.detach().double().pow(2).sum()) for w in weights)
    return l1, math.sqrt(sq)


def weight_metrics(weights: Sequence[Tensor],
                   initial: tuple[float, float] | None) -> dict[str, float]:
    """weight_* metrics; ``initial`` = norms when regularization started (None: not yet).

    The relative norms answer study 000's "coefficients shrank to ~20% of the
    original" directly; before the start they are 1.0 by definition, and a zero
    starting norm (nothing to shrink) also reports 1.0 rather than dividing by 0.
    """
    l1, l2 = weight_norms(weights)
    total = sum(w.numel() for w in weights)
    small = sum(int((w.detach().abs() < SPARSITY_THRESHOLD).sum()) for w in weights)
    l1_rel = l2_rel = 1.0
    if initial is not None:
        l1_rel = l1 / initial[0] if initial[0] > 0 else 1.0
        l2_rel = l2 / initial[1] if initial[1] > 0 else 1.0
    return {
        "weight_l1": l1, "weight_l2": l2, "weight_l1_rel": l1_rel, "weight_l2_rel": l2_rel,
        "weight_sparsity": small / total if total else 0.0,
    }
