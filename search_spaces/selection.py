"""Which trial is the answer: one set of rules, used by the driver and the service.

* ``best``: the trial whose *last reported* objective value is best for the
  mode; ties go to the earliest trial (the first to report: lowest index), so the answer does not
  depend on the order in which results happened to arrive.
* ``one_standard_error``: the most regularized trial whose last value is within
  one standard error of the best trial's. The standard error is the best
  trial's own, from its recent epochs: the sample standard deviation of its
  objective over its last ``SE_WINDOW`` epochs divided by sqrt(n) (the driver
  records it as ``objective_se`` with each result). "Most regularized" orders by
  larger ``reg_lambda``, then earlier ``reg_start_step``, then larger
  ``smooth_l1_weight`` and ``dropout``; ties to the earliest trial.
* Several objectives: the Pareto set (no other trial at least as good in every
  objective and better in one), in trial order; its first member best in the
  first objective is also returned as the top-level answer.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal, Protocol, Sequence, TypeVar

SE_WINDOW = 3


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
        if trial.objective is None or not math.isfinite(trial.objective):
            continue
        if best is None or better(trial.objective, best.objective, mode):  # type: ignore[arg-type]
            best = trial
    return best


def standard_error(values: Sequence[float]) -> float:
    """SE of the mean of the last SE_WINDOW values (0 with fewer than two)."""
    recent = [v for v in values if math.isfinite(v)][-SE_WINDOW:]
    if len(recent) < 2:
        return 0.0
    mean = sum(recent) / len(recent)
    var = sum((v - mean) ** 2 for v in recent) / (len(recent) - 1)
    return math.sqrt(var / len(recent))


def regularization_rank(config: dict[str, Any]) -> tuple[float, ...]:
    """Smaller is *more* regularized (so ``min`` picks the most regularized)."""
    return (-float(config.get("reg_lambda", 0.0)), float(config.get("reg_start_step", 0)),
            -float(config.get("smooth_l1_weight", 0.0)), -float(config.get("dropout", 0.0)))


def one_standard_error(trials: Iterable[T], mode: str) -> tuple[T | None, float]:
    trials = list(trials)
    best = best_trial(trials, mode)
    if best is None:
        return None, 0.0
    se = float(getattr(best, "metrics", {}).get("objective_se", 0.0) or 0.0)
    threshold = best.objective - se if mode == "max" else best.objective + se  # type: ignore
    within = [t for t in trials if t.objective is not None and math.isfinite(t.objective)
              and (t.objective >= threshold if mode == "max" else t.objective <= threshold)]
    chosen = min(within, key=lambda t: (regularization_rank(getattr(t, "config", {})), t.index))
    return chosen, se


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    at_least = all((x >= y) if m == "max" else (x <= y) for x, y, m in zip(a, b, modes))
    strictly = any(better(x, y, m) for x, y, m in zip(a, b, modes))
    return at_least and strictly


def pareto_front(trials: Iterable[Any], objectives: Sequence[tuple[str, str]]) -> list[Any]:
    scored = []
    for trial in sorted(trials, key=lambda t: t.index):
        values = [trial.metrics.get(metric) for metric, _ in objectives]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            scored.append((trial, [float(v) for v in values]))
    modes = [m for _, m in objectives]
    return [t for t, v in scored if not any(dominates(w, v, modes) for _, w in scored)]


def best_payload(trial: Any) -> dict[str, Any]:
    """The /best answer for a stored trial."""
    return {"trial_id": trial.trial_id, "config": trial.config, "metric": trial.objective,
            "metrics": trial.metrics, "mlflow_run_id": trial.mlflow_run_id}


def select(spec: Any, trials: Iterable[Any]) -> dict[str, Any] | None:
    """The answer of a job under its spec's selection policy, or None before any result."""
    trials = list(trials)
    objective = spec.objective
    if objective.multi:
        objectives = objective.objectives()
        front = pareto_front(trials, objectives)
        if not front:
            return None
        first_metric, first_mode = objectives[0]
        top = front[0]
        for trial in front[1:]:
            if better(trial.metrics[first_metric], top.metrics[first_metric], first_mode):
                top = trial
        return {**best_payload(top), "policy": "pareto",
                "pareto": [best_payload(t) for t in front]}
    mode = objective.direction
    if objective.select == "one_standard_error":
        chosen, se = one_standard_error(trials, mode)
        if chosen is None:
            return None
        return {**best_payload(chosen), "policy": "one_standard_error", "standard_error": se,
                "best_trial_id": best_trial(trials, mode).trial_id}  # type: ignore[union-attr]
    best = best_trial(trials, mode)
    return {**best_payload(best), "policy": "best"} if best else None
