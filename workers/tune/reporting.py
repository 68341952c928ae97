"""Tune callbacks that record trials: in MLflow and in regtune's job store.

They run inside the driver, the single writer for a job: a trial never opens a
database connection, which keeps trials cheap and keeps SQLite free of
concurrent writers. MLflow gets one child run per trial (tagged with the
parent run, the job id and the trial id), params = the trial's complete
configuration, and metrics per epoch in one ``log_batch`` call.

What is recorded is a *unit*: a Tune trial, or each member of a batched
population (``workers.tune.population.member_units``), so a member has its own
run and record exactly as a trial does.

A unit is recorded at its first result, not at its start: a trial started in the
instant before a driver is killed, after Tune's last snapshot, is unknown to the
restored experiment and is replaced; recording it at start would leave a
phantom beside its replacement.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ray.tune import Callback

from search_spaces import SearchSpec
from search_spaces.catalog import METRICS
from search_spaces.selection import better, standard_error
from workers.tune.population import member_units

log = logging.getLogger(__name__)

PLACEMENT_KEYS = ("node_ip", "node_id", "hostname", "gpu_ids", "cuda_visible_devices")
_BOOKKEEPING = ("epoch", "step", "reg_active")


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The metrics a trial reported (the catalogue's, plus step bookkeeping)."""
    out = {}
    for key in (*METRICS, *_BOOKKEEPING):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class _Units:
    """Per unit, the last epoch recorded: a stopped member repeats its last metrics."""

    def __init__(self) -> None:
        self.epochs: dict[str, int] = {}

    def fresh(self, spec: SearchSpec, trial: Any, result: dict):
        for unit, params, metrics in member_units(spec, trial, result):
            epoch = int(metrics.get("epoch", result.get("training_iteration", 0)) or 0)
            if epoch <= self.epochs.get(unit, 0):
                continue
            self.epochs[unit] = epoch
            yield unit, params, metrics, epoch


class MlflowTrialCallback(Callback):
    """One MLflow child run per trial (or population member), under the job's run."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 job_id: str, spec: SearchSpec) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.job_id = job_id
        self.spec = spec
        self.run_ids: dict[str, str] = {}
        self._placed: set[str] = set()
        self._units = _Units()

    # Tune pickles its callbacks with the experiment state (for Tuner.restore):
    # keep only the URI and build the client again after unpickling.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def run_for(self, unit: str, params: dict[str, Any]) -> str:
        run_id = self.run_ids.get(unit)
        if run_id is None:
            run_id = self._find_or_create(unit, params)
            self.run_ids[unit] = run_id
        return run_id

    def _find_or_create(self, unit: str, params: dict[str, Any]) -> str:
        from mlflow.entities import Param

        # A resumed driver finds the run it created before it died.
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`regtune.job_id` = '{self.job_id}' and "
                          f"tags.`regtune.trial_id` = '{unit}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"mlflow.parentRunId": self.parent_run_id, "regtune.job_id": self.job_id,
                "regtune.trial_id": unit, "mlflow.runName": unit}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=unit)
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in sorted(params.items())])
        return run.info.run_id

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        for unit, params, metrics, epoch in self._units.fresh(self.spec, trial, result):
            run_id = self.run_for(unit, params)
            batch = [Metric(k, v, now, epoch) for k, v in numeric_metrics(metrics).items()]
            tags = []
            if unit not in self._placed:  # where it runs, once per (re)start
                tags = [RunTag(f"regtune.{k}", str(result.get(k, ""))) for k in PLACEMENT_KEYS]
                self._placed.add(unit)
            self.client.log_batch(run_id, metrics=batch, tags=tags)

    def _finish(self, trial: Any, status: str) -> None:
        for unit, params, _ in member_units(self.spec, trial, trial.last_result):
            self.client.set_terminated(self.run_for(unit, params), status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED")


class StoreTrialCallback(Callback):
    """Mirror trial state into the job store, which the API serves and streams."""

    def __init__(self, database_url: str, job_id: str, spec: SearchSpec,
                 mlflow_cb: MlflowTrialCallback | None = None) -> None:
        self.database_url = database_url
        self._store: Any = None
        self.job_id = job_id
        self.spec = spec
        self.mlflow_cb = mlflow_cb
        self.metric = spec.objective.metric
        self.mode = spec.objective.direction
        self.best: dict[str, Any] | None = None
        self._history: dict[str, list[float]] = {}  # objective per epoch, for its SE
        self._units = _Units()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> Any:
        if self._store is None:
            from service.store import open_store

            self._store = open_store(self.database_url)
        return self._store

    def _run_id(self, unit: str) -> str | None:
        return self.mlflow_cb.run_ids.get(unit) if self.mlflow_cb else None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        for unit, params, _ in member_units(self.spec, trial, None):
            self.store.add_event(self.job_id, "trial_started", {"trial_id": unit,
                                                                "config": params})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        for unit, params, raw, epoch in self._units.fresh(self.spec, trial, result):
            self._record(unit, params, numeric_metrics(raw), epoch, result)

    def _record(self, unit: str, params: dict[str, Any], metrics: dict[str, float],
                epoch: int, result: dict) -> None:
        objective = metrics.get(self.metric)
        if objective is not None:
            history = self._history.setdefault(unit, [])
            history.append(objective)
            metrics["objective_se"] = standard_error(history)
        fields: dict[str, Any] = dict(status="running", metrics=metrics, config=params,
                                      iteration=epoch, objective=objective,
                                      mlflow_run_id=self._run_id(unit))
        if epoch == 1:
            # The Ray node id: unique, where IPs repeat (nodes sharing a host).
            fields.update(node=result.get("node_id"),
                          gpu_ids=[g for g in str(result.get("gpu_ids", "")).split(",") if g])
        stored = self.store.upsert_trial(self.job_id, unit, **fields)
        self.store.add_event(self.job_id, "trial_result",
                             {"trial_id": unit, "iteration": epoch, "metrics": metrics})
        if objective is not None and (self.best is None or better(
                objective, self.best["metric"], self.mode)):
            self.best = {"trial_id": unit, "metric": objective, "metrics": metrics,
                         "config": stored.config, "mlflow_run_id": stored.mlflow_run_id}
            self.store.update_job(self.job_id, best=self.best)

    def _finish(self, trial: Any, status: str | None, **payload: Any) -> None:
        for unit, params, metrics in member_units(self.spec, trial, trial.last_result):
            done = int(metrics.get("epoch", 0) or 0)
            final = status or ("completed" if done >= self.spec.train.epochs else "stopped")
            self.store.upsert_trial(self.job_id, unit, status=final, config=params,
                                    mlflow_run_id=self._run_id(unit))
            self.store.add_event(self.job_id, "trial_" + final,
                                 {"trial_id": unit, "iterations": done, **payload})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "failed", error=str(getattr(trial, "error_msg", "") or "")[:2000])
