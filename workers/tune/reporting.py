"""Tune callbacks that record trials: in MLflow and in regtune's job store.

They run inside the driver, the single writer for a job: a trial never opens a
database connection, which keeps trials cheap and keeps SQLite free of
concurrent writers. MLflow gets one child run per trial (tagged with the
parent run, the job id and the trial id), params = the trial's complete
configuration, and metrics per epoch (the epoch as step), written by a
background thread that coalesces epochs into few ``log_batch`` calls
(``workers.tune.mlflow_writer``): the trials never wait for MLflow.

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
from workers.tune.mlflow_writer import MlflowWriter
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
    """One MLflow child run per trial (or population member), under the job's run.

    The hooks run in Tune's driver thread while every trial waits for them, so
    they only enqueue: a :class:`~workers.tune.mlflow_writer.MlflowWriter` thread
    creates the runs and writes params, coalesced per-epoch metrics and final
    statuses. ``run_ids`` is filled in as runs are made; :meth:`run_id` waits for
    one. The writer is flushed and stopped at the end of each Tune round
    (``on_experiment_end``) and by :meth:`close`; it is never pickled with the
    callback and is rebuilt on first use after ``Tuner.restore``.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 job_id: str, spec: SearchSpec, interval_s: float = 1.0,
                 bulk_metrics: bool = True) -> None:
        self.tracking_uri = tracking_uri
        self.bulk_metrics = bulk_metrics  # child runs by workers.tune.mlflow_bulk
        self._client: Any = None
        self._writer: MlflowWriter | None = None
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.job_id = job_id
        self.spec = spec
        self.interval_s = interval_s
        self.run_ids: dict[str, str] = {}
        self._opened: set[str] = set()  # units whose run the writer was asked to open
        self._placed: set[str] = set()
        self._units = _Units()

    # Tune pickles its callbacks with the round's tuner (tuner.pkl, when the round
    # begins) for Tuner.restore: keep the URI and ids, build the client and the writer
    # again after unpickling. Units opened but not yet made are forgotten, so a
    # restored driver opens them again.
    #
    # Epochs still queued are not yet in MLflow: a pickle counts a unit as recorded
    # only up to the epoch the writer has written. A restored driver then raises the
    # count to what the job store holds (StoreTrialCallback.reconcile); what MLflow
    # lacks of those epochs comes from the job store at the job's end (backfill.py).
    def __getstate__(self) -> dict[str, Any]:
        units = self._units
        if self._writer is not None:
            units = _Units()
            written = dict(self._writer.written)
            units.epochs = {u: min(e, written.get(u, 0)) for u, e in self._units.epochs.items()}
        return {**self.__dict__, "_client": None, "_writer": None, "_opened": set(),
                "run_ids": dict(self.run_ids), "_units": units}

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def writer(self) -> MlflowWriter:
        if self._writer is None:
            uri = self.tracking_uri

            def client() -> Any:  # the writer thread's own client
                from mlflow.tracking import MlflowClient

                return MlflowClient(tracking_uri=uri)

            def bulk() -> Any:  # None where the store is not one it can write
                from workers.tune.mlflow_bulk import BulkStore

                return BulkStore.for_uri(uri)

            # getattr: a callback pickled (in a Tune snapshot) before the option existed.
            use_bulk = getattr(self, "bulk_metrics", True)
            self._writer = MlflowWriter(client, self.experiment_id, self.parent_run_id,
                                        self.job_id, self.run_ids, interval_s=self.interval_s,
                                        bulk_factory=bulk if use_bulk else None)
            # What is recorded now was written by an earlier writer (closed, so
            # flushed) or restored from a snapshot (which counts only what was written).
            self._writer.written.update(self._units.epochs)
        return self._writer

    def _to_open(self, unit: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """``params`` if the writer must open the unit's run now, else None."""
        if unit in self.run_ids or unit in self._opened:
            return None
        self._opened.add(unit)
        return params

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        now = int(time.time() * 1000)
        for unit, params, metrics, epoch in self._units.fresh(self.spec, trial, result):
            tags = None
            if unit not in self._placed:  # where it runs, once per (re)start
                tags = {f"regtune.{k}": str(result.get(k, "")) for k in PLACEMENT_KEYS}
                self._placed.add(unit)
            self.writer.log(unit, numeric_metrics(metrics), now, epoch, tags,
                            open_params=self._to_open(unit, params))

    def _finish(self, trial: Any, status: str) -> None:
        now = int(time.time() * 1000)
        for unit, params, _ in member_units(self.spec, trial, trial.last_result):
            # open_params: a trial that failed before its first result gets a run too
            self.writer.terminate(unit, status, now, open_params=self._to_open(unit, params))
        # Not waited for: a driver killed before the writer wrote it leaves the job store
        # with every epoch, and the driver that takes over copies them (backfill.py).

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """End of a Tune round (Tune calls it from its cleanup, on errors too)."""
        self.close()

    def close(self, timeout: float | None = 120.0) -> bool:
        """Write everything queued and stop the writer; True if nothing was left unwritten.

        The driver calls it before it finishes the parent run. Idempotent; a later
        result starts a new writer.
        """
        writer, self._writer = self._writer, None
        self._opened = set()  # made runs are in run_ids; the rest are opened again
        if writer is None:
            return True
        return writer.close(timeout) and not writer.stats["dropped"]


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
        # Per unit, the config last written: re-sent only when it changes (PBT), not
        # with every epoch of every member.
        self._configs: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    # Tune pickles the callbacks once, with the round's tuner (tuner.pkl, when the round
    # begins), and unpickles them only for ``Tuner.restore``: the restored copy knows
    # nothing recorded since. Trials resume from their checkpoints and report again the
    # epochs after them, which the job store (written before Tune moves on) already
    # has; so the store, not the pickle, says what each unit has recorded.
    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reconcile = True

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.__dict__.pop("_reconcile", False):
            self.reconcile()

    def reconcile(self) -> None:
        """Take what each unit recorded, and the job's best, from the job store.

        Run once after a restore, before any result: epochs the store has are not
        recorded again, here or in MLflow (the MLflow callback shares the count; what
        MLflow lacks of them, the driver copies from the store at the job's end,
        workers.tune.backfill), and the standard error of a unit's objective is over
        every epoch it trained, not just those since the restore.
        """
        from workers.tune.backfill import recorded_epochs

        shared = None if self.mlflow_cb is None else self.mlflow_cb._units
        for unit, epochs in recorded_epochs(self.store, self.job_id).items():
            last = max(epochs)
            for units in (self._units, shared):
                if units is not None and units.epochs.get(unit, 0) < last:
                    units.epochs[unit] = last
            self._history[unit] = [metrics[self.metric] for e, (metrics, _) in
                                   sorted(epochs.items()) if self.metric in metrics]
        job = self.store.get_job(self.job_id)
        if job is not None and job.best:
            self.best = job.best

    @property
    def store(self) -> Any:
        if self._store is None:
            from service.store import open_store

            self._store = open_store(self.database_url)
        return self._store

    def _ids(self, unit: str) -> dict[str, Any]:
        """``mlflow_run_id`` for an upsert, only once known (the runs are made in the
        background; None would erase a stored one)."""
        run_id = None if self.mlflow_cb is None else self.mlflow_cb.run_ids.get(unit)
        if run_id is not None and self.best is not None and self.best["trial_id"] == unit \
                and self.best.get("mlflow_run_id") != run_id:
            self.best = {**self.best, "mlflow_run_id": run_id}  # best before its run was made
            self.store.update_job(self.job_id, best=self.best)
        return {} if run_id is None else {"mlflow_run_id": run_id}

    # Each hook makes one store.record call: a population's K members are K upserts and
    # K events in one transaction (separately they cost 170 ms per result at K = 64).

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.store.record(self.job_id, events=[
            ("trial_started", {"trial_id": unit, "config": params})
            for unit, params, _ in member_units(self.spec, trial, None)])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        writes, events, objectives = [], [], []
        for unit, params, raw, epoch in self._units.fresh(self.spec, trial, result):
            metrics = numeric_metrics(raw)
            objective = metrics.get(self.metric)
            if objective is not None:
                history = self._history.setdefault(unit, [])
                history.append(objective)
                metrics["objective_se"] = standard_error(history)
            fields: dict[str, Any] = dict(status="running", metrics=metrics,
                                          iteration=epoch, objective=objective,
                                          **self._ids(unit))
            if self._configs.get(unit) != params:
                fields["config"] = params
            if epoch == 1:
                # The Ray node id: unique, where IPs repeat (nodes sharing a host).
                fields.update(node=result.get("node_id"), gpu_ids=[
                    g for g in str(result.get("gpu_ids", "")).split(",") if g])
            writes.append((unit, fields))
            events.append(("trial_result", {"trial_id": unit, "iteration": epoch,
                                            "metrics": metrics}))
            objectives.append((objective, metrics))
        if not writes:
            return
        stored = self.store.record(self.job_id, trials=writes, events=events)
        self._configs.update((unit, f["config"]) for unit, f in writes if "config" in f)
        best = self.best
        for row, (objective, metrics) in zip(stored, objectives):
            if objective is not None and (best is None or better(objective, best["metric"],
                                                                 self.mode)):
                best = {"trial_id": row.trial_id, "metric": objective, "metrics": metrics,
                        "config": row.config, "mlflow_run_id": row.mlflow_run_id}
        if best is not self.best:
            self.best = best
            self.store.update_job(self.job_id, best=best)

    def _finish(self, trial: Any, status: str | None, **payload: Any) -> None:
        writes, events = [], []
        for unit, params, metrics in member_units(self.spec, trial, trial.last_result):
            done = int(metrics.get("epoch", 0) or 0)
            final = status or ("completed" if done >= self.spec.train.epochs else "stopped")
            # The run id if made yet: not waited for (a population's K runs can still be
            # in the making); on_experiment_end links the rest once the writer is flushed.
            writes.append((unit, dict(status=final, config=params, **self._ids(unit))))
            events.append(("trial_" + final,
                           {"trial_id": unit, "iterations": done, **payload}))
        self.store.record(self.job_id, trials=writes, events=events)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "failed", error=str(getattr(trial, "error_msg", "") or "")[:2000])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """End of a Tune round, after the MLflow callback flushed its writer (it comes
        first in the driver's list): link the runs made after their trial's last write."""
        try:
            self.link_runs()
        except Exception:  # noqa: BLE001 - Tune's clean-up must go on; the links are extra
            log.exception("linking MLflow runs to the trials of job %s", self.job_id)

    def link_runs(self) -> None:
        if self.mlflow_cb is None:
            return
        known = self.mlflow_cb.run_ids
        writes = [(t.trial_id, {"mlflow_run_id": known[t.trial_id]})
                  for t in self.store.list_trials(self.job_id)
                  if t.mlflow_run_id is None and t.trial_id in known]
        if writes:
            self.store.record(self.job_id, trials=writes)
        if self.best is not None and self.best["trial_id"] in known:
            self._ids(self.best["trial_id"])  # the answer so far names its run
