"""How the MLflow writer's rounds reach MLflow: a mixin of
:class:`~workers.tune.mlflow_writer.MlflowWriter`, apart from its queue and thread.

Each run's write goes through the bulk path (``workers.tune.mlflow_bulk``: SQL straight
into MLflow's tables, a round's runs in one transaction) where the store allows it,
else through MLflow's client (``log_batch`` in MLflow's batch limits, ``set_terminated``),
retried with back-off. A run is found (a driver taking over made it) or made before
anything is written to it. The writer's thread is the only caller.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from workers.tune.mlflow_runs import batches, child_run_tags, job_runs

log = logging.getLogger(__name__)


@dataclass
class Op:
    """One queued operation for a unit's run: open, data or end (a barrier)."""

    kind: str  # "open" | "data" | "end"
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, v, ts, step
    tags: dict[str, str] = field(default_factory=dict)
    status: str = ""
    end_time: int = 0


class RunSending:
    """The writer's calls to MLflow; the state they use is the writer's."""

    _bulk: Any
    _bulk_factory: Callable[[], Any] | None
    _batch: list[tuple[str, str, list, dict, Op | None, list[Op]]] | None
    _known: dict[str, str] | None
    _cond: threading.Condition
    _failed: set[str]
    experiment_id: str
    parent_run_id: str
    job_id: str
    run_ids: dict[str, str]
    retries: int
    backoff_s: float
    written: dict[str, int]
    stats: dict[str, Any]
    cpu_by_call: dict[str, float]
    _give_up: Callable[..., None]

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One MLflow call, retried with back-off; raises the last error."""
        for attempt in range(self.retries + 1):
            cpu = time.thread_time()
            try:
                self.stats["calls"] += 1
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - retried, then raised
                self.stats["errors"] += 1
                if attempt == self.retries:
                    raise
                log.warning("MLflow %s failed (attempt %d of %d), retrying: %s", what,
                            attempt + 1, self.retries + 1, exc)
                time.sleep(self.backoff_s * 2 ** attempt)
            finally:  # CPU per kind of call, for the benchmark
                self.cpu_by_call[what] = (self.cpu_by_call.get(what, 0.0)
                                          + time.thread_time() - cpu)
        raise AssertionError("unreachable")

    def _send(self, client: Any, unit: str, run_id: str,
              metrics: list[tuple[str, float, int, int]], params: dict[str, str],
              tags: dict[str, str], end: Op | None) -> None:
        """One run's write now: in bulk, else (params of a run the client made, or the
        bulk path refused) through MLflow's client; then its metrics count as written."""
        if params or not self._write_bulk(run_id, metrics, tags, end):
            from mlflow.entities import Metric, Param, RunTag

            if metrics or params or tags:
                for m, p, t in batches([Metric(*x) for x in metrics],
                                       [Param(k, v) for k, v in params.items()],
                                       [RunTag(k, v) for k, v in tags.items()]):
                    self._call("log_batch", client.log_batch, run_id, metrics=m, params=p,
                               tags=t)
            if end is not None:
                self._call("set_terminated", client.set_terminated, run_id, end.status,
                           end_time=end.end_time)
        self._mark_written(unit, metrics)

    def _mark_written(self, unit: str, metrics: list[tuple[str, float, int, int]]) -> None:
        if metrics:
            top = max(step for *_, step in metrics)
            self.written[unit] = max(self.written.get(unit, 0), top)

    def _flush_batch(self, client: Any) -> None:
        """This round's bulk writes in one transaction (``BulkStore.write_runs``: a commit
        costs more than a run's rows); refused or failed, one by one, as before."""
        batch, self._batch = self._batch, None
        if not batch:
            return
        if len(batch) > 1 and self._bulk_call("write_runs", [
                (run_id, metrics, tags, _end_at(end))
                for _, run_id, metrics, tags, end, _ in batch]) is not None:
            for unit, _, metrics, *_ in batch:
                self._mark_written(unit, metrics)
            return
        for unit, run_id, metrics, tags, end, ops in batch:
            try:
                self._send(client, unit, run_id, metrics, {}, tags, end)
            except Exception as exc:  # noqa: BLE001 - logged, counted, never fatal
                held = [op for op in ops if op.kind == "data"]
                self._give_up(unit, "log_batch" if held else "end", exc, ops)

    def _make_bulk(self) -> Any:
        """The bulk path, or None (none given, or it could not be made: the client then)."""
        if self._bulk_factory is None:
            return None
        try:
            return self._bulk_factory()
        except Exception as exc:  # noqa: BLE001 - MLflow's own path is always there
            log.warning("MLflow bulk writes unavailable (%s); MLflow's client writes the "
                        "child runs", exc)
            return None

    def _bulk_call(self, what: str, *args: Any) -> Any:
        """One call of the bulk path; None: MLflow's client is to do it (the path is
        off, refused this call, or failed and is now off for good)."""
        bulk = self._bulk
        if bulk is None:
            return None
        from workers.tune.mlflow_bulk import attempt

        def failed(exc: Exception) -> None:
            log.warning("MLflow bulk writes failed (%s); MLflow's client writes the child "
                        "runs from now on", exc)
            self._bulk = None
            bulk.close()

        cpu = time.thread_time()
        self.stats["calls"] += 1
        try:
            done, out = attempt(bulk, what, args, failed)
            self.stats["bulk_calls"] += done
            return out
        finally:
            self.cpu_by_call[f"{what} (bulk SQL)"] = (
                self.cpu_by_call.get(f"{what} (bulk SQL)", 0.0) + time.thread_time() - cpu)

    def _write_bulk(self, run_id: str, metrics: list[tuple[str, float, int, int]],
                    tags: dict[str, str], end: Op | None) -> bool:
        """Metrics, tags and the run's end in one bulk transaction; False: the client's."""
        if not (metrics or tags or end):
            return True
        return self._bulk_call("write_run", run_id, metrics, tags, _end_at(end)) is not None

    def _open(self, client: Any, unit: str, params: dict[str, str]) -> dict[str, str]:
        """Find the unit's run (a resumed driver made it before) or create it.

        Returns the params still to log: all for a new run, none for a found one
        (a PBT trial's config may have changed since; MLflow refuses changed params).
        """
        if self._known is None:  # one search per writer, not one per trial
            tagged = self._bulk_call("runs_tagged", self.experiment_id,
                                     {"regtune.job_id": self.job_id}, "regtune.trial_id")
            if tagged is not None:
                self._known = {}
                for run_id, trial_id in tagged:  # newest first, as job_runs keeps them
                    if trial_id:
                        self._known.setdefault(trial_id, run_id)
        if self._known is None:
            found_runs = job_runs(
                lambda *a, **kw: self._call("search_runs", client.search_runs, *a, **kw),
                self.experiment_id, self.job_id)
            self._known = {trial_id: run.info.run_id for trial_id, run in found_runs.items()}
        found = self._known.get(unit)
        if found is None:
            tags = child_run_tags(self.parent_run_id, self.job_id, unit)
            made = self._bulk_call("create_run", self.experiment_id, unit, tags, params)
            if made is None:
                made = self._call("create_run", client.create_run, self.experiment_id,
                                  tags=tags, run_name=unit).info.run_id
            else:
                params = {}  # written with the run
            self._known[unit] = made
        with self._cond:
            self.run_ids[unit] = self._known[unit]
            self._failed.discard(unit)
            self._cond.notify_all()
        return params if found is None else {}



def _end_at(end: Op | None) -> tuple[str, int] | None:
    """An end op as the bulk path takes it: (status, end time in ms)."""
    return None if end is None else (end.status, end.end_time)
