"""After a driver restart, MLflow gets every epoch the job store recorded.

Why: the driver writes MLflow in the background (:mod:`workers.tune.mlflow_writer`),
so a driver killed with writes still queued loses them; a restored trial resumes
after its last checkpoint and never re-reports the epochs before it, and a
finished trial is never run again. Making the driver wait for MLflow at every
checkpoint and completion closed that gap, but every trial then stood still
while MLflow created and wrote runs: after a population's first epoch, all of its
members waited for K runs to be made.

The job store already holds each epoch's metrics (the ``trial_result`` events,
written in the driver's callback before Tune records a checkpoint), so the driver
that takes over a job copies what MLflow lacks from there at the end of the job
and ends the runs a kill left RUNNING. A job that never restarted has nothing to
copy: each round's end flushes the writer.
"""

from __future__ import annotations

import logging
from typing import Any

from workers.tune.mlflow_runs import batches, child_run_tags, job_runs

log = logging.getLogger(__name__)

#: Job store trial status -> the MLflow status of its run once finished.
RUN_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED",
              "cancelled": "KILLED"}
#: Written by the store callback, not by the MLflow writer: not copied.
STORE_ONLY = frozenset({"objective_se"})
#: Every epoch the writer logs carries it: its steps are the epochs MLflow has.
PRESENCE_KEY = "epoch"


def presence_key(history: dict[int, tuple[dict, int]]) -> str:
    """A metric every recorded epoch has ("epoch" where it is there), whose steps in
    MLflow are the epochs MLflow has."""
    common = set.intersection(*(set(values) for values, _ in history.values())) - STORE_ONLY
    return PRESENCE_KEY if PRESENCE_KEY in common or not common else sorted(common)[0]


def recorded_epochs(store: Any, job_id: str) -> dict[str, dict[int, tuple[dict, int]]]:
    """trial id -> epoch -> (metrics, timestamp in ms), from the job's trial_result events."""
    out: dict[str, dict[int, tuple[dict, int]]] = {}
    after = 0
    while True:
        page = store.events_since(job_id, after, limit=1000)
        if not page:
            return out
        for event in page:
            body = event.payload
            if event.kind == "trial_result" and "trial_id" in body and "iteration" in body:
                stamp = int(event.created_at.timestamp() * 1000)
                out.setdefault(body["trial_id"], {})[int(body["iteration"])] = (
                    dict(body.get("metrics") or {}), stamp)
        after = page[-1].seq


def backfill(store: Any, job_id: str, client: Any, experiment_id: str,
             parent_run_id: str) -> dict[str, int]:
    """Copy the epochs MLflow lacks from the job store; make missing runs; end finished
    trials' runs. Returns counts (runs made, epochs written, runs ended)."""
    from mlflow.entities import Metric, Param

    stats = {"runs_made": 0, "epochs_written": 0, "runs_ended": 0}
    epochs = recorded_epochs(store, job_id)
    runs = job_runs(client.search_runs, experiment_id, job_id)
    for trial in store.list_trials(job_id):
        history = epochs.get(trial.trial_id, {})
        run = runs.get(trial.trial_id)
        params: list[Any] = []
        if run is None:
            if not history and trial.status not in RUN_STATUS:
                continue
            run = client.create_run(experiment_id, run_name=trial.trial_id,
                                    tags=child_run_tags(parent_run_id, job_id, trial.trial_id))
            params = [Param(k, str(v)) for k, v in sorted(trial.config.items())]
            store.upsert_trial(job_id, trial.trial_id, mlflow_run_id=run.info.run_id)
            stats["runs_made"] += 1
        run_id = run.info.run_id
        present = ({m.step for m in client.get_metric_history(run_id, presence_key(history))}
                   if history else set())
        metrics = [Metric(key, float(value), stamp, epoch)
                   for epoch, (values, stamp) in sorted(history.items()) if epoch not in present
                   for key, value in values.items()
                   if key not in STORE_ONLY and isinstance(value, (int, float))]
        if metrics or params:
            for m, p, t in batches(metrics, params, []):
                client.log_batch(run_id, metrics=m, params=p, tags=t)
            stats["epochs_written"] += len({m.step for m in metrics})
        if run.info.status == "RUNNING" and trial.status in RUN_STATUS:
            client.set_terminated(run_id, RUN_STATUS[trial.status])
            stats["runs_ended"] += 1
    if any(stats.values()):
        log.info("MLflow backfilled from the job store after a restart: %s", stats)
    return stats
