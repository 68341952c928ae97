"""The objective of a population and its penalty's gradient, apart from the training loop.

A mixin of :class:`~workers.training.population.PopulationTrainer` (as
``population_eval`` holds its evaluation): how members are grouped by loss, the
summed prediction loss autograd differentiates, and the elastic-net penalty's
gradient added by formula after the backward pass (``docs/training.md``,
"Populations").
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor

from workers.training.population_ops import _batched_loss, _column, _Member, add_penalty_grads


class PopulationObjective:
    """``_loss_groups``, ``_group_losses``, ``_objective``, ``_add_penalty_grads``; the
    state is the trainer's (evaluation uses ``_group_losses`` too)."""

    _params: list[Tensor]
    _members: list[_Member]
    _hyper_cache: dict[Any, Any]
    setups: list[Any]
    device: torch.device

    def _loss_groups(self) -> list[tuple[str, list[int] | None, Tensor | None, list[_Member]]]:
        """Members grouped by batched loss: (name, positions, positions as a tensor, members).

        Cross-entropy members join the focal ones as focal members with γ = 0 and
        α = 1 (the same values and gradients, see ``population_ops._batched_loss``), so a
        mixed population runs one loss over all rows instead of two over
        index_select'd halves. ``positions`` is None when the group is the whole population.
        """
        groups = self._hyper_cache.get("loss_groups")
        if groups is None:
            by_name: dict[str, list[int]] = {}
            names = {m.setup.loss for m in self._members}
            for k, m in enumerate(self._members):
                name = m.setup.loss
                if name == "cross_entropy" and "focal" in names:
                    name = "focal"
                by_name.setdefault(name, []).append(k)
            if len(by_name) == 1:
                groups = [(next(iter(by_name)), None, None, self._members)]
            else:
                groups = [(name, rows, torch.tensor(rows, dtype=torch.long, device=self.device),
                           [self._members[r] for r in rows]) for name, rows in by_name.items()]
            self._hyper_cache["loss_groups"] = groups
        return groups

    def _group_losses(self, out: Tensor, target: Tensor, factors: list[float]
                      ) -> Iterator[tuple[list[int], Tensor]]:
        """Per loss group: (member positions, per-sample loss (K_group, N)), the 000
        blend with smooth L1 applied with each member's factor. Training sums their
        means; evaluation averages them per member in float64."""
        kind = self.setups[0].kind
        for name, group, rows, members in self._loss_groups():
            group_out = out if rows is None else out.index_select(0, rows)
            positions = list(range(len(members))) if group is None else group
            mixes = [m.blend * factors[p] for m, p in zip(members, positions)]
            per_sample = _batched_loss(name, kind, members, group_out, target, self._hyper_cache)
            if any(mix != 0.0 for mix in mixes):
                smooth = _batched_loss("smooth_l1", kind, members, group_out, target,
                                       self._hyper_cache)
                mix = _column(mixes, per_sample, 1)
                blended = (1.0 - mix) * per_sample + mix * smooth
                per_sample = torch.where(mix == 0.0, per_sample,
                                         torch.where(mix == 1.0, smooth, blended))
            yield positions, per_sample

    def _objective(self, out: Tensor, target: Tensor, factors: list[float]) -> Tensor:
        """Σ over members of the batch-mean prediction loss.

        The penalty is not part of it: its gradient is added by formula after the
        backward pass (:meth:`_add_penalty_grads`), which is cheaper than a dozen
        autograd nodes over the stacked weights and gives the same gradient.
        """
        total: Tensor | None = None
        for _, per_sample in self._group_losses(out, target, factors):
            part = per_sample.mean(dim=1).sum()
            total = part if total is None else total + part
        assert total is not None
        return total

    def _add_penalty_grads(self, factors: list[float]) -> None:
        """Add ∂/∂w of each member's factor·λ·(r·‖w‖₁ + (1−r)·½‖w‖₂²) to the weights' grads.

        That is factor·λ·r·sgn(w) + factor·λ·(1−r)·w (``penalties.penalty``'s
        gradient, as autograd computes it for the unbatched trainer); the factors
        change only while a schedule ramps, so the coefficient columns are cached.
        """
        cached = self._hyper_cache.get("penalty")
        if cached is None or cached[0] != factors:
            scales = [f * m.reg_lambda if f > 0.0 else 0.0
                      for f, m in zip(factors, self._members)]
            l1 = [s * m.l1_ratio for s, m in zip(scales, self._members)]
            l2 = [s * (1.0 - m.l1_ratio) for s, m in zip(scales, self._members)]
            like = self._params[0]
            cached = (list(factors),
                      _column(l1, like, 0) if any(c != 0.0 for c in l1) else None,
                      _column(l2, like, 0) if any(c != 0.0 for c in l2) else None)
            self._hyper_cache["penalty"] = cached
        coefs = cached[1:]
        add_penalty_grads(self._params[0::2], *coefs)
