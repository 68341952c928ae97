"""The batched building blocks of populations against their one-model references."""

from __future__ import annotations

import math

import pytest
import torch

from workers.training.penalties import penalty
from workers.training.population_ops import add_penalty_grads, first_argmax


def test_first_argmax_is_max_indices_with_ties_and_nans() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5, 10, 300, generator=gen)
    values[0, :, 7] = 1.0                          # every class ties: the first wins
    values[1, 3, 9] = values[1, 8, 9] = 50.0       # a tie between two classes
    values[2, 4, 11] = math.nan                    # NaN counts as the maximum
    values[2, 2, 12] = values[2, 6, 12] = math.nan  # the first NaN
    values[3, 5, 13] = math.inf
    values[4] = values[4].round()                  # many ties over a whole member
    expected = values.max(dim=1).indices
    assert torch.equal(first_argmax(values), expected)
    assert int(first_argmax(values)[0, 7]) == 0 and int(first_argmax(values)[1, 9]) == 3
    assert int(first_argmax(values)[2, 12]) == 2


@pytest.mark.parametrize("l1_ratio", [0.0, 0.3, 1.0])
def test_penalty_gradients_by_formula_equal_autograd(l1_ratio: float) -> None:
    """Member k's gradient is that of factor_k · penalties.penalty(its weights)."""
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(3, 8, 5, generator=gen), torch.randn(3, 2, 8, generator=gen)]
    weights[0][1, 0, 0] = 0.0  # sgn(0) = 0, as |w|'s gradient in autograd
    lambdas, factors = [1e-2, 0.0, 3e-1], [1.0, 1.0, 0.25]
    l1 = torch.tensor([f * lam * l1_ratio for f, lam in zip(factors, lambdas)])
    l2 = torch.tensor([f * lam * (1 - l1_ratio) for f, lam in zip(factors, lambdas)])
    base = [torch.randn(w.shape, generator=gen) for w in weights]
    stacked = [w.clone().requires_grad_() for w in weights]
    for w, g in zip(stacked, base):
        w.grad = g.clone()
    add_penalty_grads(stacked, l1 if l1_ratio > 0 else None, l2 if l1_ratio < 1 else None)
    for k in range(3):
        member = [w[k].detach().clone().requires_grad_() for w in weights]
        value = factors[k] * penalty(member, lambdas[k], l1_ratio)
        if value.requires_grad:  # λ = 0: a constant 0, no gradient
            value.backward()
        for w, m, g in zip(stacked, member, base):
            expected = g[k] + (m.grad if m.grad is not None else 0.0)
            torch.testing.assert_close(w.grad[k], expected, rtol=1e-6, atol=1e-7)
    # member 1 (λ = 0) keeps its prediction gradient untouched
    assert all(torch.equal(w.grad[1], g[1]) for w, g in zip(stacked, base))
