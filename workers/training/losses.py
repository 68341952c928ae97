"""Prediction losses, one registry entry per name in ``search_spaces.catalog.LOSSES``.

Every loss here returns a *per-sample* vector (shape ``(N,)``), never a mean:
training takes the mean of a batch, evaluation sums chunks of a dataset, and the
study-000 blend mixes two losses sample by sample. Reducing in one place (the
trainer) keeps "mean over samples" true for every metric that is a loss.

Classification losses receive logits ``(N, K)`` and integer targets ``(N,)``.
``l1``, ``mse`` and ``smooth_l1`` on a classification task act on the softmax
probabilities against one-hot targets, averaged over the K classes — exactly
``torch.nn.L1Loss()(softmax(z), one_hot(y))`` — because that is what study 002
compared (and found useless for classification, which a rerun should reproduce).

Regression losses receive predictions ``(N,)`` and targets ``(N,)``.

Huber / Smooth-L1 uses study 000's formula with transition δ = ``huber_delta``::

    L_δ(a) = ½ a²            if |a| < δ
             δ (|a| − ½ δ)   otherwise

which equals ``F.huber_loss(delta=δ)`` and ``δ · F.smooth_l1_loss(beta=δ)``
(PyTorch's smooth-L1 divides the quadratic part by β instead of scaling the
linear part by δ). Tests pin both identities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

#: (output, target) -> per-sample loss of shape (N,)
LossFn = Callable[[Tensor, Tensor], Tensor]
#: (task kind, complete trial params) -> LossFn
LossFactory = Callable[[str, Mapping[str, Any]], LossFn]

# --- formulas (pure, per element or per sample) ------------------------------


def huber(a: Tensor, delta: float) -> Tensor:
    """Study 000's Smooth-L1 of a residual ``a``, elementwise."""
    if delta <= 0:
        raise ValueError(f"huber_delta must be > 0, got {delta}")
    abs_a = a.abs()
    return torch.where(abs_a < delta, 0.5 * a * a, delta * (abs_a - 0.5 * delta))


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """−log p_target per sample, from ``log_softmax`` (stable for large logits)."""
    return -F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)


def focal(logits: Tensor, target: Tensor, gamma: float, alpha: float = 1.0) -> Tensor:
    """FL = −α (1 − p_t)^γ log p_t per sample; γ = 0, α = 1 is cross-entropy.

    ``1 − p_t`` is computed as ``−expm1(log p_t)``, which keeps its precision when
    p_t is near 1, and is floored at the smallest normal float: where p_t rounds
    to exactly 1, ``(1 − p_t)^γ`` with γ < 1 would otherwise have an infinite
    derivative and turn the gradient into NaN (inf · 0), although the true
    contribution of such a sample is 0.
    """
    if gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {gamma}")
    log_pt = F.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if gamma == 0:
        return -alpha * log_pt
    one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
    return -alpha * one_minus_pt.pow(gamma) * log_pt


def _probs_vs_onehot(elementwise: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """Lift an elementwise residual loss to logits vs class labels (study 002)."""

    def loss(logits: Tensor, target: Tensor) -> Tensor:
        probs = F.softmax(logits, dim=-1)
        onehot = F.one_hot(target, num_classes=logits.shape[-1]).to(probs.dtype)
        return elementwise(probs, onehot).mean(dim=-1)

    return loss


def _pointwise(elementwise: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """Regression: the residual loss of one prediction per sample."""

    def loss(pred: Tensor, target: Tensor) -> Tensor:
        return elementwise(pred.reshape(target.shape), target)

    return loss


_ADAPTERS: dict[str, Callable[[Callable[[Tensor, Tensor], Tensor]], LossFn]] = {
    "classification": _probs_vs_onehot,
    "regression": _pointwise,
}


def _residual_factory(make: Callable[[Mapping[str, Any]], Callable[[Tensor, Tensor], Tensor]]
                      ) -> LossFactory:
    """A loss defined on residuals applies to either kind through an adapter."""

    def factory(kind: str, params: Mapping[str, Any]) -> LossFn:
        return _ADAPTERS[kind](make(params))

    return factory


def _classification_only(make: Callable[[Mapping[str, Any]], LossFn]) -> LossFactory:
    def factory(kind: str, params: Mapping[str, Any]) -> LossFn:
        if kind != "classification":
            raise ValueError(f"this loss needs a classification task, not {kind}")
        return make(params)

    return factory


LOSSES: dict[str, LossFactory] = {
    "cross_entropy": _classification_only(lambda p: cross_entropy),
    "focal": _classification_only(
        lambda p: lambda z, y: focal(z, y, float(p["focal_gamma"]), float(p["focal_alpha"]))),
    "l1": _residual_factory(lambda p: lambda a, b: (a - b).abs()),
    "mse": _residual_factory(lambda p: lambda a, b: (a - b) ** 2),
    "smooth_l1": _residual_factory(
        lambda p: lambda a, b: huber(a - b, float(p["huber_delta"]))),
}


def build_loss(name: str, kind: str, params: Mapping[str, Any]) -> LossFn:
    """The per-sample loss ``name`` for a task of ``kind`` with the trial's params."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}") from None
    if kind not in _ADAPTERS:
        raise ValueError(f"unknown task kind {kind!r}")
    return factory(kind, params)


@dataclass(frozen=True)
class PredictionLoss:
    """The loss a trial minimizes before the penalty, including study 000's blend.

    With blend weight w = ``smooth_l1_weight`` and schedule factor f::

        loss_f = (1 − w·f) · base + w·f · smooth_l1(δ)

    so before the start step (f = 0) it is exactly ``base``, and from the end of
    the ramp it is (1 − w)·base + w·smooth_l1. w = 0 turns the mode off.
    """

    base: LossFn
    smooth: LossFn
    weight: float

    @classmethod
    def build(cls, kind: str, params: Mapping[str, Any]) -> "PredictionLoss":
        weight = float(params["smooth_l1_weight"])
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"smooth_l1_weight must be in [0, 1], got {weight}")
        return cls(base=build_loss(str(params["loss"]), kind, params),
                   smooth=build_loss("smooth_l1", kind, params), weight=weight)

    def __call__(self, output: Tensor, target: Tensor, factor: float) -> Tensor:
        """Per-sample loss on a step whose schedule factor is ``factor``."""
        mix = self.weight * factor
        if mix == 0.0:
            return self.base(output, target)
        if mix == 1.0:
            return self.smooth(output, target)
        return (1.0 - mix) * self.base(output, target) + mix * self.smooth(output, target)
