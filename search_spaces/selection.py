"""Which trial is best: one rule, used by the driver (best so far) and the service.

Best = the trial whose *last reported* objective value is best for the mode;
ties go to the earliest trial (lowest index), so the answer does not depend on
the order in which results happened to arrive.
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Protocol, TypeVar


class HasObjective(Protocol):
    index: int
    objective: float | None


T = TypeVar("T", bound=HasObjective)


def better(a: float, b: float, mode: Literal["min", "max"] | str) -> bool:
    """True when ``a`` is strictly better than ``b``."""
    return a > b if mode == "max" else a < b


def best_trial(trials: Iterable[T], mode: Literal["min", "max"] | str) -> T | None:
    best: T | None = None
    for trial in sorted(trials, key=lambda t: t.index):
        if trial.objective is None:
            continue
        if best is None or better(trial.objective, best.objective, mode):  # type: ignore[arg-type]
            best = trial
    return best


def best_payload(trial: Any) -> dict[str, Any]:
    """The /best answer for a stored trial."""
    return {"trial_id": trial.trial_id, "config": trial.config, "metric": trial.objective,
            "metrics": trial.metrics, "mlflow_run_id": trial.mlflow_run_id}
