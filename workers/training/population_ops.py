"""Batched forms of the training library's losses and metrics, for ``population``.

Each takes a leading member dimension (K models at once) and returns one value
per member, equal to what ``losses`` and ``metrics`` compute for one model. Kept
apart from ``PopulationTrainer`` so the trainer module holds the training loop
and these hold the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.training import metrics as M
from workers.training.losses import PredictionLoss
from workers.training.schedules import RegSchedule
from workers.training.setup import TrialSetup


@dataclass
class _Member:
    """One member's static hyperparameters and its evolving schedule state."""

    index: int  # position in the setups list given to the trainer
    setup: TrialSetup
    schedule: RegSchedule
    reg_lambda: float
    l1_ratio: float
    blend: float
    lr: float
    momentum: float
    initial_norms: tuple[float, float] | None = None


#: Losses with a batched form (:func:`_batched_loss`).
BATCHABLE_LOSSES = ("cross_entropy", "focal", "l1", "mse", "smooth_l1")


def make_member(index: int, setup: TrialSetup) -> _Member:
    """Member ``index`` of a population, refusing what the Trainer (or batching) refuses."""
    p = setup.params
    if not 0.0 <= float(p["smooth_l1_weight"]) <= 1.0:
        raise ValueError(f"smooth_l1_weight must be in [0, 1], got {p['smooth_l1_weight']}")
    if float(p["reg_lambda"]) < 0 or not 0.0 <= float(p["l1_ratio"]) <= 1.0:
        raise ValueError("reg_lambda must be >= 0 and l1_ratio in [0, 1]")
    if setup.loss not in BATCHABLE_LOSSES:
        raise ValueError(f"loss {setup.loss!r} has no batched form; populations support "
                         f"{list(BATCHABLE_LOSSES)}")
    PredictionLoss.build(setup.kind, p)  # the same validation the Trainer does
    return _Member(index=index, setup=setup,
                   schedule=RegSchedule.from_params(p), reg_lambda=float(p["reg_lambda"]),
                   l1_ratio=float(p["l1_ratio"]), blend=float(p["smooth_l1_weight"]),
                   lr=float(p["lr"]), momentum=float(p["momentum"]))


def _column(values: Sequence[float], like: Tensor, dims: int) -> Tensor:
    """A float tensor of shape (K, 1, ..., 1) with ``dims`` trailing singleton axes."""
    return torch.tensor(list(values), dtype=like.dtype, device=like.device).reshape(
        -1, *([1] * dims))


def _member_column(cache: dict[Any, Any] | None, param: str, members: Sequence[_Member],
                   values: Callable[[_Member], float], like: Tensor, dims: int) -> Tensor:
    """``_column`` of a static per-member value, kept in ``cache`` (the trainer's, which
    is cleared whenever the members change) under the group's identity."""
    key = (param, id(members), dims)
    if cache is not None and key in cache:
        return cache[key][1]
    column = _column([values(m) for m in members], like, dims)
    if cache is not None:
        cache[key] = (members, column)  # holding ``members`` keeps its id from being reused
    return column


def _focal_alpha(m: _Member) -> float:
    """α of a focal member; a cross-entropy member is focal with α = 1 and γ = 0."""
    return 1.0 if m.setup.loss == "cross_entropy" else float(m.setup.params["focal_alpha"])


def _focal_gamma(m: _Member) -> float:
    return 0.0 if m.setup.loss == "cross_entropy" else float(m.setup.params["focal_gamma"])


# --- batched per-sample losses (mirroring workers/training/losses.py) ------------------


def _log_pt(logits: Tensor, target: Tensor) -> Tensor:
    """log p_target for class-major logits (K, C, N) -> (K, N).

    Softmax over dim 1 of a (K, C, N) tensor is an order of magnitude faster on
    the CPU than over a last dimension of size C = 10 (the values agree to
    float32 rounding, not bit for bit).
    """
    index = target.reshape(1, 1, -1).expand(logits.shape[0], 1, -1)
    return F.log_softmax(logits, dim=1).gather(1, index).squeeze(1)


def _huber(a: Tensor, delta: Tensor) -> Tensor:
    abs_a = a.abs()
    return torch.where(abs_a < delta, 0.5 * a * a, delta * (abs_a - 0.5 * delta))


def _residual(name: str, members: Sequence[_Member], a: Tensor,
              cache: dict[Any, Any] | None = None) -> Tensor:
    """Elementwise residual loss ``name`` with each member's own δ (rows = members)."""
    if name == "l1":
        return a.abs()
    if name == "mse":
        return a ** 2
    if name == "smooth_l1":
        delta = _member_column(cache, "huber_delta", members,
                               lambda m: float(m.setup.params["huber_delta"]), a, a.dim() - 1)
        return _huber(a, delta)
    raise ValueError(f"no batched form of loss {name!r}")


def _batched_loss(name: str, kind: str, members: Sequence[_Member], out: Tensor,
                  target: Tensor, cache: dict[Any, Any] | None = None) -> Tensor:
    """Per-sample loss ``name`` for each member: class-major ``out`` (K, C, B) -> (K, B).

    ``focal`` also serves cross-entropy members (α = 1, γ = 0): −1·(1−p)⁰·log p
    is −log p exactly, and the (1−p)^γ factor's gradient is exactly 0 at γ = 0.
    ``cache`` keeps the per-member constant columns between steps.
    """
    if name == "cross_entropy":
        return -_log_pt(out, target)
    if name == "focal":
        log_pt = _log_pt(out, target)
        alpha = _member_column(cache, "focal_alpha", members, _focal_alpha, out, 1)
        if all(_focal_gamma(m) == 0.0 for m in members):
            return -alpha * log_pt
        gamma = _member_column(cache, "focal_gamma", members, _focal_gamma, out, 1)
        one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
        return -alpha * one_minus_pt.pow(gamma) * log_pt
    if kind == "classification":
        probs = F.softmax(out, dim=1)
        onehot = F.one_hot(target, num_classes=out.shape[1]).t().to(probs.dtype)
        return _residual(name, members, probs - onehot, cache).mean(dim=1)
    return _residual(name, members, out.reshape(out.shape[0], -1) - target, cache)


# --- batched metrics (mirroring workers/training/metrics.py, one row per member) -------


def _rows(values: Tensor) -> list[float]:
    return [float(v) for v in values.tolist()]


def first_argmax(values: Tensor) -> Tensor:
    """``values.max(dim=1).indices`` for (K, C, N): the first maximum, NaN counting as one.

    On the CPU ``max(dim=1)`` over a class-major tensor walks it with strided
    indices (3.3 ms for the digits train split at K = 64); ``amax`` is a fast
    reduction, and the first class reaching it is the largest of descending ranks
    (1.2 ms, the same indices).
    """
    top = values.amax(dim=1, keepdim=True)
    hit = values == top
    if top.isnan().any():  # amax is NaN where any value is; max's index is the first NaN
        hit |= values.isnan() & top.isnan()
    c = values.shape[1]
    dtype = torch.uint8 if c < 256 else torch.int32
    rank = torch.arange(c, 0, -1, dtype=dtype, device=values.device).reshape(1, c, 1)
    return c - (hit * rank).amax(dim=1).long()


def _classification_metrics(logits: Tensor, target: Tensor,
                            n_classes: int) -> dict[str, list[float]]:
    """metrics.classification_metrics for class-major logits (K, C, N)."""
    k, _, n = logits.shape
    probs = torch.softmax(logits.double(), dim=1)
    # max(dim).indices is argmax (the first maximum on ties, NaN counting as the
    # maximum) and much faster than argmax over a non-last dimension.
    confidence, pred = probs.max(dim=1)
    offsets = torch.arange(k, device=logits.device).unsqueeze(1)
    idx = offsets * (n_classes * n_classes) + target.long() * n_classes + pred.long()
    confusion = torch.bincount(idx.reshape(-1), minlength=k * n_classes * n_classes)
    confusion = confusion.reshape(k, n_classes, n_classes).double()  # [member, true, pred]
    tp = confusion.diagonal(dim1=1, dim2=2)
    predicted = confusion.sum(dim=1)
    actual = confusion.sum(dim=2)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300),
                     torch.zeros_like(tp))
    # expected_calibration_error, NaN for a member whose confidences are not finite
    finite = torch.isfinite(confidence).all(dim=1)
    safe = torch.where(finite.unsqueeze(1), confidence, torch.zeros_like(confidence))
    correct = (pred == target).double()
    bins = (torch.ceil(safe * M.ECE_BINS) - 1).clamp(0, M.ECE_BINS - 1).long()
    flat = (offsets * M.ECE_BINS + bins).reshape(-1)
    conf_sum = torch.bincount(flat, weights=safe.reshape(-1), minlength=k * M.ECE_BINS)
    acc_sum = torch.bincount(flat, weights=correct.reshape(-1), minlength=k * M.ECE_BINS)
    ece = (conf_sum - acc_sum).reshape(k, M.ECE_BINS).abs().sum(dim=1) / max(1, n)
    ece = torch.where(finite, ece, torch.full_like(ece, math.nan))
    return {
        "val_accuracy": _rows((pred == target).double().mean(dim=1)),
        "val_precision": _rows(precision.mean(dim=1)),
        "val_recall": _rows(recall.mean(dim=1)),
        "val_f1": _rows(f1.mean(dim=1)),
        "val_ece": _rows(ece),
    }


def _regression_metrics(pred: Tensor, target: Tensor) -> dict[str, list[float]]:
    """metrics.regression_metrics for predictions (K, N)."""
    y = target.double()
    diff = pred.double() - y
    ss_res = ((y - pred.double()) ** 2).sum(dim=1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    if ss_tot == 0.0:
        r2 = [1.0 if v == 0.0 else 0.0 for v in ss_res.tolist()]
    else:
        r2 = [1.0 - v / ss_tot for v in ss_res.tolist()]
    return {"val_mae": _rows(diff.abs().mean(dim=1)),
            "val_rmse": [math.sqrt(v) for v in (diff * diff).mean(dim=1).tolist()],
            "val_r2": r2}


def _weight_metrics(weights: Sequence[Tensor],
                    initial: Sequence[tuple[float, float] | None]) -> dict[str, list[float]]:
    """metrics.weight_metrics for stacked weights (K, ...) per layer."""
    with torch.no_grad():
        l1 = sum(w.detach().double().abs().flatten(1).sum(dim=1) for w in weights)
        sq = sum(w.detach().double().pow(2).flatten(1).sum(dim=1) for w in weights)
        small = sum((w.detach().abs() < M.SPARSITY_THRESHOLD).flatten(1).sum(dim=1)
                    for w in weights)
    total = sum(w[0].numel() for w in weights)
    out: dict[str, list[float]] = {name: [] for name in (
        "weight_l1", "weight_l2", "weight_l1_rel", "weight_l2_rel", "weight_sparsity")}
    rows = zip(l1.tolist(), sq.tolist(), small.tolist(), initial)  # type: ignore[union-attr]
    for a, s, z, norms in rows:
        l2 = math.sqrt(s)
        l1_rel = l2_rel = 1.0
        if norms is not None:
            l1_rel = a / norms[0] if norms[0] > 0 else 1.0
            l2_rel = l2 / norms[1] if norms[1] > 0 else 1.0
        out["weight_l1"].append(a)
        out["weight_l2"].append(l2)
        out["weight_l1_rel"].append(l1_rel)
        out["weight_l2_rel"].append(l2_rel)
        out["weight_sparsity"].append(z / total if total else 0.0)
    return out


# --- the penalty's gradient and the optimizers, on stacked parameters --------------------


def add_penalty_grads(weights: Sequence[Tensor], l1: Tensor | None, l2: Tensor | None) -> None:
    """``w.grad += l1·sgn(w) + l2·w`` member by member; ``l1``, ``l2``: (K,) or None (all 0).

    The gradient of λ·(r·‖w‖₁ + (1−r)·½‖w‖₂²) times the schedule's factor, with
    l1 = factor·λ·r and l2 = factor·λ·(1−r); sgn(0) = 0 as in autograd's |w|.
    """
    with torch.no_grad():
        for w in weights:
            assert w.grad is not None
            shape = (-1,) + (1,) * (w.dim() - 1)
            if l1 is not None:
                w.grad.addcmul_(torch.sign(w), l1.view(shape))
            if l2 is not None:
                w.grad.addcmul_(w, l2.view(shape))

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def sgd_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None,
             momentum: Callable[[int], Tensor], neg_lr: Callable[[int], Tensor]
             ) -> list[Tensor]:
    """torch.optim.SGD (dampening 0, no nesterov) per member; returns the momentum buffers.

    ``momentum(dims)`` and ``neg_lr(dims)`` give (K, 1, ...) columns of the members'
    momentum and -lr with ``dims`` trailing axes.
    """
    if buffers is None:
        buffers = [g.detach().clone() for g in grads]
    else:
        for buf, g in zip(buffers, grads):
            buf.mul_(momentum(buf.dim() - 1))
            buf.add_(g)
    for p, buf in zip(params, buffers):
        # addcmul(p, buf, -lr) rounds exactly like SGD's p.add_(buf, alpha=-lr)
        p.addcmul_(buf, neg_lr(p.dim() - 1))
    return buffers


def adam_step(params: list[Tensor], grads: list[Tensor], exp_avg: list[Tensor],
              exp_avg_sq: list[Tensor], step: int, lrs: Sequence[float]) -> None:
    """torch.optim.Adam (default betas/eps, no amsgrad) per member, ``step`` counted from 1."""
    beta1, beta2 = ADAM_BETAS
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2_sqrt = (1 - beta2 ** float(step)) ** 0.5
    neg_step = [-(lr / bias_correction1) for lr in lrs]
    for p, g, m1, m2 in zip(params, grads, exp_avg, exp_avg_sq):
        m1.lerp_(g, 1 - beta1)
        m2.mul_(beta2).addcmul_(g, g.conj(), value=1 - beta2)
        denom = (m2.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        # addcdiv_(m1, denom, value=v) computes p + v * m1 / denom, in that order
        p.add_(_column(neg_step, p, p.dim() - 1) * m1 / denom)
