"""Earlier results fed back into a search: warm start and extension.

* Warm start: a spec names an earlier job; its top-k configurations, read from
  MLflow (the system of record for trials), are *tried first*.
* Extension: a finished job asked for more trials; its finished trials are
  *told* to the sampler as known results, so nothing is re-run and the search
  continues from what it knows.

Both map stored parameter values back onto the new spec's searched parameters:
a value outside the new space, or of a parameter the new spec does not search,
is dropped, and ``include_zero`` / conditional parameters are respected.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from search_spaces import Choices, Range, SearchSpec
from workers.tune.space import CONDITIONS, ZERO_SUFFIX


def _typed(param: Range | Choices, raw: Any) -> Any:
    if isinstance(param, Choices):
        for choice in param.choices:
            if choice == raw or str(choice) == str(raw):
                return choice
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if param.include_zero and value == 0:
        return 0
    if not (param.low <= value <= param.high):
        return None
    return int(round(value)) if param.type == "int" else value


def sampled_point(spec: SearchSpec, values: dict[str, Any]) -> dict[str, Any]:
    """Stored values -> the define-by-run parameters the new spec would sample."""
    point: dict[str, Any] = {}
    searched = spec.searched()
    conditional = "loss" in searched and spec.search.algorithm != "grid"
    context = {"loss": values.get("loss", spec.objective.loss), **values}
    for name, param in searched.items():
        condition = CONDITIONS.get(name)
        if conditional and condition and not condition(context):
            continue
        if name not in values:
            continue
        value = _typed(param, values[name])
        if value is None:
            continue
        if isinstance(param, Range) and param.include_zero:
            point[name + ZERO_SUFFIX] = value == 0
            if value == 0:
                continue
        point[name] = value
    return point


def distributions(spec: SearchSpec, point: dict[str, Any]) -> dict[str, Any]:
    """Optuna distributions of the parameters in ``point`` (as the space samples them)."""
    out: dict[str, Any] = {}
    searched = spec.searched()
    for name in point:
        if name.endswith(ZERO_SUFFIX):
            out[name] = optuna.distributions.CategoricalDistribution([False, True])
            continue
        param = searched[name]
        if isinstance(param, Choices):
            out[name] = optuna.distributions.CategoricalDistribution(list(param.choices))
        elif param.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(param.low), int(param.high),
                                                             log=param.log)
        else:
            out[name] = optuna.distributions.FloatDistribution(param.low, param.high,
                                                               log=param.log)
    return out


def known_results(spec: SearchSpec, trials: list[Any]) -> list[tuple[dict, list[float]]]:
    """Finished stored trials as (point, objective values) for the sampler."""
    out = []
    for trial in trials:
        if trial.status not in ("completed", "stopped"):
            continue
        values = [trial.metrics.get(metric) for metric, _ in spec.objective.objectives()]
        if any(v is None or not math.isfinite(float(v)) for v in values):
            continue
        point = sampled_point(spec, trial.config)
        if point:
            out.append((point, [float(v) for v in values]))
    return out


def top_configurations(tracking_uri: str, experiment_id: str, job_id: str, spec: SearchSpec,
                       top_k: int) -> list[dict[str, Any]]:
    """The earlier job's best k trial configurations by this spec's primary objective."""
    from mlflow.tracking import MlflowClient

    metric, mode = spec.objective.objectives()[0]
    runs = MlflowClient(tracking_uri=tracking_uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`regtune.job_id` = '{job_id}' and tags.`regtune.trial_id` != ''",
        order_by=[f"metrics.`{metric}` {'DESC' if mode == 'max' else 'ASC'}"], max_results=1000)
    # Ties (common: accuracy on a small validation set) go to the earlier trial.
    sign = -1.0 if mode == "max" else 1.0
    runs = sorted((r for r in runs if metric in r.data.metrics),
                  key=lambda r: (sign * r.data.metrics[metric], r.info.start_time, r.info.run_id))
    points: list[dict[str, Any]] = []
    for run in runs:
        point = sampled_point(spec, run.data.params)
        if point and point not in points:
            points.append(point)
        if len(points) == top_k:
            break
    return points


class SeededOptunaSearch(OptunaSearch):
    """An OptunaSearch that also tells the study results known beforehand.

    Ray's own ``evaluated_rewards`` refuses a define-by-run space; the spec knows
    every distribution, so the finished trials are added to the study directly.
    """

    def __init__(self, *args: Any, spec: SearchSpec | None = None,
                 known: list[tuple[dict, list[float]]] | None = None, **kwargs: Any) -> None:
        self._regtune_spec = spec
        self._regtune_known = known or []
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        for point, values in self._regtune_known:
            trial = optuna.trial.create_trial(
                params=point, distributions=distributions(self._regtune_spec, point),
                values=values, state=optuna.trial.TrialState.COMPLETE)
            self._ot_study.add_trial(trial)
        self._regtune_known = []
