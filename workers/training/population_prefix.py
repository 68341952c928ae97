"""A batched population that also shares the training prefix of its members (B2 + B3).

Shared prefixes (:mod:`workers.training.prefix`) train the steps that trials agree
on once; batching (:class:`~workers.training.population.PopulationTrainer`) trains
K members as one model, several times cheaper per member-step on small models.
Unbatched, sharing still leaves every trial its own steps after its start, which
bounds evenly spread start steps near half the independent compute (B3). Here the
two combine: members that agree up to their start steps (one
:func:`~workers.training.prefix.prefix_key`) begin as **one row**, the trunk, and
each member forks off it at its own start step: its row is a copy of the trunk's
weights and optimizer state at that step, and from there it trains in the batch
like any member. A step costs what the rows alive at it cost: 1 row at first, K
at the end.

Why the trunk row carries the member with the latest start: before its start a
member's schedule factor is exactly 0, so the loss is the plain prediction loss
and every unforked member's weights are the trunk's. The trunk's own member is
the last to need a row of its own, so it can stand for all the others until they
fork. A member that has not forked reports the trunk's metrics, which are its own.

Results match :class:`PopulationTrainer` on the same setups within the population's
tolerance (the same operations, on fewer rows at a time). Checkpoints are
PopulationTrainer's plus which members still wait on the trunk. The population
trainable with ``search.share_prefixes`` trains each prefix group with it
(``workers.tune.shared_prefix``); bench B3 measures it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from workers.training.population import PopulationTrainer
from workers.training.population_ops import make_member
from workers.training.population_state import (load_population_state, member_state,
                                                population_state)
from workers.training.prefix import prefix_key
from workers.training.setup import TrialSetup


class SharedPrefixPopulation(PopulationTrainer):
    """K members with one prefix key: one trunk row, a row per member from its start step."""

    def __init__(self, setups: Sequence[TrialSetup], device: torch.device | None = None) -> None:
        setups = list(setups)
        if len({prefix_key(s) for s in setups}) > 1:
            raise ValueError("members must agree on everything but what acts from their "
                             "start step (workers.training.prefix.prefix_key)")
        super().__init__(setups, device)
        total = self.epochs * self.steps_per_epoch
        forks = sorted((min(int(s.params["reg_start_step"]), total), i)
                       for i, s in enumerate(setups))
        self._trunk = forks[-1][1]
        #: (fork step, member index) of members still on the trunk, ascending.
        self._pending: list[tuple[int, int]] = forks[:-1]
        self._logical = list(range(len(setups)))
        #: Σ over steps of the rows trained: the compute, in member-steps.
        self.row_steps = 0
        self._keep([self._trunk])

    @property
    def active(self) -> list[int]:
        return list(self._logical)

    @property
    def done(self) -> bool:
        return self._epoch >= self.epochs or not self._logical

    @property
    def rows(self) -> int:
        """Rows in the batch now (the trunk and the forked members)."""
        return len(self._members)

    def _trunk_position(self) -> int:
        return next(k for k, m in enumerate(self._members) if m.index == self._trunk)

    def _fork(self, member_index: int) -> None:
        position = self._trunk_position()
        record = make_member(member_index, self.setups[member_index])
        self._keep([*range(len(self._members)), position], [*self._members, record])

    def _train_step(self, xb: Any, yb: Any) -> None:
        while self._pending and self._pending[0][0] <= self._step:
            self._fork(self._pending.pop(0)[1])
        self.row_steps += len(self._members)
        super()._train_step(xb, yb)

    def stop(self, member_index: int) -> None:
        if member_index not in self._logical:
            raise ValueError(f"member {member_index} is not active (active: {self.active})")
        self._logical.remove(member_index)
        waiting = [p for p in self._pending if p[1] == member_index]
        if waiting:  # still on the trunk: it simply never forks
            self._pending.remove(waiting[0])
        elif member_index == self._trunk and self._pending:
            # The trunk goes on for the members still on it: the one that forks last
            # takes over the row (same weights; its factor is still 0).
            _, heir = self._pending.pop()
            position = self._trunk_position()
            members = list(self._members)
            members[position] = make_member(heir, self.setups[heir])
            self._keep(list(range(len(members))), members)
            self._trunk = heir
        else:
            super().stop(member_index)

    def evaluate(self) -> list[dict[str, float]]:
        by_member = {m.index: r for m, r in zip(self._members, super().evaluate())}
        trunk = by_member[self._trunk]
        return [dict(by_member.get(i, trunk)) for i in self._logical]

    def state_dict(self) -> dict[str, Any]:
        """The rows (as PopulationTrainer's checkpoint) and which members wait on the trunk."""
        return {**population_state(self), "shared": {
            "trunk": self._trunk, "pending": [list(p) for p in self._pending],
            "logical": list(self._logical), "row_steps": self.row_steps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shared" not in state:
            raise ValueError("not a shared-prefix population checkpoint")
        load_population_state(self, state)
        shared = state["shared"]
        self._trunk = int(shared["trunk"])
        self._pending = [(int(f), int(i)) for f, i in shared["pending"]]
        self._logical = [int(i) for i in shared["logical"]]
        self.row_steps = int(shared["row_steps"])

    def member_state_dict(self, member_index: int) -> dict[str, Any]:
        """As PopulationTrainer's; a member still on the trunk has the trunk's state (its
        optimizer settings are the trunk member's too: they are part of the prefix key)."""
        if member_index not in self._logical:
            raise ValueError(f"member {member_index} is not active (active: {self.active})")
        rows = {m.index for m in self._members}
        return member_state(self, member_index if member_index in rows else self._trunk)
