"""The elastic-net penalty, which tensors it covers, and the start-step schedule."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from workers.training.models import CNN, MLP, ModelShape
from workers.training.penalties import penalized_weights, penalty
from workers.training.schedules import RegSchedule


def _weights(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=torch.float64),
            torch.randn(5, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("lam,ratio", [(0.1, 0.0), (0.1, 1.0), (0.03, 0.3), (0.0, 0.5)])
def test_penalty_formula(lam: float, ratio: float) -> None:
    ws = _weights()
    l1 = sum(w.abs().sum() for w in ws)
    sq = sum((w ** 2).sum() for w in ws)
    expected = lam * (ratio * l1 + (1 - ratio) * 0.5 * sq)
    torch.testing.assert_close(penalty(ws, lam, ratio), torch.as_tensor(expected))


def test_penalty_refuses_out_of_domain() -> None:
    with pytest.raises(ValueError):
        penalty(_weights(), -1.0, 0.5)
    with pytest.raises(ValueError):
        penalty(_weights(), 1.0, 1.5)


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 10), st.floats(0, 10), st.floats(0, 1), st.integers(0, 100))
def test_penalty_nonnegative_and_monotone_in_lambda(a, b, ratio, seed) -> None:
    ws = _weights(seed)
    lo, hi = sorted((a, b))
    p_lo, p_hi = float(penalty(ws, lo, ratio)), float(penalty(ws, hi, ratio))
    assert 0.0 <= p_lo <= p_hi * (1 + 1e-12)


@pytest.mark.parametrize("ratio", [0.0, 0.4, 1.0])
def test_penalty_gradcheck(ratio: float) -> None:
    ws = [w.requires_grad_(True) for w in _weights(7)]  # no exact zeros: |w| is smooth there
    assert torch.autograd.gradcheck(lambda *t: penalty(list(t), 0.3, ratio), tuple(ws))


def test_l2_gradient_is_lambda_w_and_l1_is_lambda_sign() -> None:
    w = _weights()[0].requires_grad_(True)
    penalty([w], 0.2, 0.0).backward()
    torch.testing.assert_close(w.grad, 0.2 * w.detach())
    w.grad = None
    penalty([w], 0.2, 1.0).backward()
    torch.testing.assert_close(w.grad, 0.2 * w.detach().sign())


def test_only_linear_and_conv_weights_are_penalized() -> None:
    class WithNorms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.bn = nn.BatchNorm2d(2)
            self.ln = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 3)
            self.weight = nn.Parameter(torch.ones(3))  # a free tensor *named* weight

    m = WithNorms()
    got = {id(p) for p in penalized_weights(m)}
    assert got == {id(m.conv.weight), id(m.fc.weight)}
    for excluded in (m.conv.bias, m.fc.bias, m.bn.weight, m.bn.bias, m.ln.weight, m.weight):
        assert id(excluded) not in got


def test_biases_get_no_penalty_gradient() -> None:
    mlp = MLP(ModelShape(in_features=5, n_outputs=2, hidden_sizes=(4,)))
    penalty(penalized_weights(mlp), 1.0, 0.5).backward()
    for name, p in mlp.named_parameters():
        if name.endswith("bias"):
            assert p.grad is None, name
        else:
            assert p.grad is not None and bool((p.grad != 0).any()), name


def test_cnn_penalizes_its_kernels_and_head() -> None:
    cnn = CNN(ModelShape(in_features=64, n_outputs=10, image_shape=(1, 8, 8), channels=(4, 8)))
    assert [tuple(w.shape) for w in penalized_weights(cnn)] == [(4, 1, 3, 3), (8, 4, 3, 3),
                                                                (10, 8 * 2 * 2)]


# --- schedule ----------------------------------------------------------------------

def test_schedule_jumps_at_start_without_ramp() -> None:
    s = RegSchedule(start=5, ramp=0)
    assert [s.factor(i) for i in range(8)] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert not s.active(4) and s.active(5)


def test_schedule_ramps_linearly_to_one() -> None:
    s = RegSchedule(start=2, ramp=4)
    assert [s.factor(i) for i in range(8)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 50), st.integers(0, 20), st.integers(0, 100))
def test_schedule_properties(start: int, ramp: int, step: int) -> None:
    s = RegSchedule(start, ramp)
    f = s.factor(step)
    assert 0.0 <= f <= 1.0
    assert (f == 0.0) == (step < start)
    assert s.factor(step + 1) >= f
    if step >= start + max(ramp, 1) - 1:
        assert f == 1.0


def test_schedule_from_params_and_refuses_negative() -> None:
    assert RegSchedule.from_params({"reg_start_step": 3, "reg_ramp_steps": 2}) == RegSchedule(3, 2)
    with pytest.raises(ValueError):
        RegSchedule(-1, 0)
