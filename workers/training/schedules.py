"""When regularization switches on, and how fast it reaches full strength.

Study 000 found that the *timing* of a constraint matters: switched on
mid-training it helped, from step 0 it over-constrained. So every penalty (and
the 000 Smooth-L1 blend) is multiplied by ``factor(step)`` from this one pure
function, which makes "exactly zero before the start step" a property we can test
without training anything.

``step`` is the 0-based index of the optimizer step about to be taken, i.e. the
number of steps already completed, counted across epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class RegSchedule:
    """factor(step) = 0 before ``start``; then 1/R, 2/R, ... 1 over ``ramp`` = R steps.

    ``ramp`` = 0 (or 1) jumps straight to 1 at the start step, so the penalty is
    already active on the step whose index equals ``start``.
    """

    start: int = 0
    ramp: int = 0

    def __post_init__(self) -> None:
        if self.start < 0 or self.ramp < 0:
            raise ValueError(f"start and ramp must be >= 0, got {self.start}, {self.ramp}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "RegSchedule":
        return cls(start=int(params["reg_start_step"]), ramp=int(params["reg_ramp_steps"]))

    def factor(self, step: int) -> float:
        """The multiplier of the penalty (and blend weight) on optimizer step ``step``."""
        if step < self.start:
            return 0.0
        if self.ramp <= 1:
            return 1.0
        return min(1.0, (step - self.start + 1) / self.ramp)

    def active(self, step: int) -> bool:
        """Whether the step with this index is regularized at all."""
        return self.factor(step) > 0.0
