"""Each loss against its formula, against PyTorch where PyTorch has it, and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.training.losses import PredictionLoss, build_loss, cross_entropy, focal, huber

PARAMS = {"huber_delta": 1.0, "focal_gamma": 2.0, "focal_alpha": 1.0, "loss": "mse",
          "smooth_l1_weight": 0.0}


def _logits(n: int = 7, k: int = 4, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=dtype) * 3, torch.randint(0, k, (n,), generator=g)


def test_huber_matches_study_000_formula_elementwise() -> None:
    a = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 0.999, 1.0, 2.5])
    delta = 1.0
    expected = [0.5 * v * v if abs(v) < delta else delta * (abs(v) - 0.5 * delta)
                for v in a.tolist()]
    assert huber(a, delta).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("delta", [0.1, 0.5, 1.0, 2.0, 7.5])
def test_huber_equals_torch_huber_and_delta_times_smooth_l1(delta: float) -> None:
    a = torch.linspace(-10, 10, 401, dtype=torch.float64)
    zero = torch.zeros_like(a)
    ours = huber(a, delta)
    torch.testing.assert_close(ours, F.huber_loss(a, zero, reduction="none", delta=delta))
    torch.testing.assert_close(ours, delta * F.smooth_l1_loss(a, zero, reduction="none",
                                                              beta=delta))


def test_huber_refuses_nonpositive_delta() -> None:
    with pytest.raises(ValueError):
        huber(torch.ones(2), 0.0)


def test_cross_entropy_matches_torch() -> None:
    z, y = _logits()
    torch.testing.assert_close(cross_entropy(z, y), F.cross_entropy(z, y, reduction="none"))
    fn = build_loss("cross_entropy", "classification", PARAMS)
    torch.testing.assert_close(fn(z, y).mean(), F.cross_entropy(z, y))


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    z = torch.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]])
    out = cross_entropy(z, torch.tensor([1, 1]))
    assert torch.isfinite(out).all() and out[0] == pytest.approx(2000.0) and out[1] == 0.0


def test_focal_at_gamma_zero_alpha_one_is_cross_entropy() -> None:
    z, y = _logits(50, 10)
    torch.testing.assert_close(focal(z, y, 0.0, 1.0), F.cross_entropy(z, y, reduction="none"))


@pytest.mark.parametrize("gamma,alpha", [(0.5, 1.0), (2.0, 0.25), (5.0, 0.7)])
def test_focal_matches_formula(gamma: float, alpha: float) -> None:
    z, y = _logits(20, 5, dtype=torch.float64)
    p_t = torch.softmax(z, -1).gather(1, y[:, None]).squeeze(1)
    expected = -alpha * (1 - p_t) ** gamma * torch.log(p_t)
    torch.testing.assert_close(focal(z, y, gamma, alpha), expected)
    built = build_loss("focal", "classification",
                       {**PARAMS, "focal_gamma": gamma, "focal_alpha": alpha})
    torch.testing.assert_close(built(z, y), expected)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradient_is_finite_when_confident(gamma: float) -> None:
    """p_t rounding to exactly 1 must not turn (1-p_t)^γ into a NaN gradient."""
    z = torch.tensor([[200.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    focal(z, torch.tensor([0, 1]), gamma).sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("name,ref", [("l1", F.l1_loss), ("mse", F.mse_loss)])
def test_classification_l1_mse_act_on_softmax_vs_one_hot(name, ref) -> None:
    z, y = _logits(9, 10)
    fn = build_loss(name, "classification", PARAMS)
    expected = ref(torch.softmax(z, -1), F.one_hot(y, 10).float())  # nn.L1Loss() as in study 002
    torch.testing.assert_close(fn(z, y).mean(), expected)


@pytest.mark.parametrize("delta", [0.05, 0.3, 1.0])
def test_classification_smooth_l1_acts_on_probabilities(delta: float) -> None:
    z, y = _logits(9, 10)
    fn = build_loss("smooth_l1", "classification", {**PARAMS, "huber_delta": delta})
    probs, onehot = torch.softmax(z, -1), F.one_hot(y, 10).float()
    torch.testing.assert_close(fn(z, y).mean(), F.huber_loss(probs, onehot, delta=delta))


@pytest.mark.parametrize("name,ref", [
    ("mse", lambda p, t, d: F.mse_loss(p, t, reduction="none")),
    ("l1", lambda p, t, d: F.l1_loss(p, t, reduction="none")),
    ("smooth_l1", lambda p, t, d: F.huber_loss(p, t, reduction="none", delta=d)),
])
def test_regression_losses_match_torch(name, ref) -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(30, 1, generator=g) * 3, torch.randn(30, generator=g)
    fn = build_loss(name, "regression", {**PARAMS, "huber_delta": 0.7})
    torch.testing.assert_close(fn(pred, target), ref(pred.squeeze(1), target, 0.7))


def test_blend_is_plain_loss_at_factor_zero_and_mixes_after() -> None:
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(40, 1, generator=g) * 4, torch.randn(40, generator=g)
    params = {**PARAMS, "loss": "mse", "smooth_l1_weight": 0.4, "huber_delta": 0.5}
    blend = PredictionLoss.build("regression", params)
    mse = F.mse_loss(pred.squeeze(1), target, reduction="none")
    hub = F.huber_loss(pred.squeeze(1), target, reduction="none", delta=0.5)
    assert torch.equal(blend(pred, target, 0.0), mse)
    torch.testing.assert_close(blend(pred, target, 1.0), 0.6 * mse + 0.4 * hub)
    torch.testing.assert_close(blend(pred, target, 0.5), 0.8 * mse + 0.2 * hub)
    full = PredictionLoss.build("regression", {**params, "smooth_l1_weight": 1.0})
    torch.testing.assert_close(full(pred, target, 1.0), hub)


# --- properties over random inputs ---------------------------------------------------

finite = st.floats(-30, 30, allow_nan=False, width=32)


@st.composite
def batches(draw):
    n = draw(st.integers(1, 6))
    k = draw(st.integers(2, 5))
    z = torch.tensor(draw(st.lists(st.lists(finite, min_size=k, max_size=k),
                                   min_size=n, max_size=n)), dtype=torch.float64)
    y = torch.tensor(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    return z, y


@settings(max_examples=60, deadline=None)
@given(batches(), st.floats(0.01, 5.0), st.floats(0.05, 1.0), st.floats(0.05, 3.0))
def test_losses_nonnegative_and_focal_below_ce(batch, gamma, alpha, delta) -> None:
    z, y = batch
    params = {**PARAMS, "focal_gamma": gamma, "focal_alpha": alpha, "huber_delta": delta}
    for name in ("cross_entropy", "focal", "l1", "mse", "smooth_l1"):
        out = build_loss(name, "classification", params)(z, y)
        assert torch.isfinite(out).all() and bool((out >= 0).all()), name
    fl = focal(z, y, gamma, 1.0)
    assert bool((fl <= cross_entropy(z, y) + 1e-12).all())


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=20), st.floats(0.01, 10.0))
def test_huber_between_zero_and_half_square_and_linear(values, delta) -> None:
    a = torch.tensor(values, dtype=torch.float64)
    h = huber(a, delta)
    assert bool((h >= 0).all())
    assert bool((h <= 0.5 * a * a + 1e-9).all())  # never above the quadratic
    assert bool((h <= delta * a.abs() + 1e-9).all())  # nor above the linear envelope


# --- gradients (float64 finite differences) -------------------------------------------

@pytest.mark.parametrize("name,kind,extra", [
    ("cross_entropy", "classification", {}),
    ("focal", "classification", {"focal_gamma": 2.0, "focal_alpha": 0.5}),
    ("focal", "classification", {"focal_gamma": 0.5}),
    ("l1", "classification", {}),
    ("mse", "classification", {}),
    ("smooth_l1", "classification", {"huber_delta": 0.1}),
    ("mse", "regression", {}),
    ("l1", "regression", {}),
    ("smooth_l1", "regression", {"huber_delta": 0.8}),
])
def test_gradcheck(name: str, kind: str, extra: dict) -> None:
    fn = build_loss(name, kind, {**PARAMS, **extra})
    if kind == "classification":
        z, y = _logits(6, 4, seed=5, dtype=torch.float64)
    else:  # residuals kept away from the kinks of |a| at 0 and of Huber at ±δ
        g = torch.Generator().manual_seed(5)
        y = torch.randn(6, generator=g, dtype=torch.float64)
        z = (y + torch.tensor([-2.0, -0.5, -0.3, 0.2, 0.45, 3.0], dtype=torch.float64))[:, None]
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fn(t, y), (z,))
