"""B6 (c): one child run, made, filled and ended through MLflow's client vs the bulk path.

Part of B6 (``bench.b6_tracking`` runs it and reports it). The same run — the
driver's child-run tags, 13 params, 10 epochs × the 18 numbers the driver records
per epoch, then FINISHED — is written to one SQLite MLflow store (WAL, as the
service sets it), once through ``MlflowClient`` (``create_run``, one ``log_batch``
with the params and every value, as the writer coalesces them, ``set_terminated``)
and once through ``workers.tune.mlflow_bulk.BulkStore`` (``create_run`` with the
params, one ``write_run`` with the values and the end), in interleaved rounds.
CPU is this thread's (``time.thread_time``); the check compares what MLflow reads
back for the two runs of each pair.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

EPOCHS = 10


def _values(keys: list[str], run: int) -> list[tuple[str, float, int, int]]:
    return [(key, 1.0 / (epoch + j + run + 1), 1_700_000_000_000 + epoch, epoch)
            for epoch in range(1, EPOCHS + 1) for j, key in enumerate(keys)]


def measure(scratch: Path, runs: int = 16, rounds: int = 3) -> dict[str, Any]:
    """Per-run CPU (ms) of each path, per round, and whether MLflow reads back the same."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from search_spaces.catalog import METRICS
    from service.app import init_mlflow
    from workers.tune.mlflow_bulk import BulkStore
    from workers.tune.mlflow_runs import child_run_tags

    scratch.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{scratch / 'bulk.db'}"
    init_mlflow(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("b6-bulk")
    bulk = BulkStore.for_uri(uri)
    if bulk is None:
        raise RuntimeError("the bulk path refused MLflow's own SQLite store")
    keys = [*METRICS, "epoch"]  # 18 names, as many as a classification trial records
    params = {f"param_{i}": str(0.1 * i) for i in range(13)}
    per_round: dict[str, list[float]] = {"client": [], "bulk": []}
    same = True

    def by_client(i: int) -> str:
        run_id = client.create_run(experiment, tags=child_run_tags("p", "job", f"t{i}"),
                                   run_name=f"t{i}").info.run_id
        client.log_batch(run_id, metrics=[Metric(*v) for v in _values(keys, i)],
                         params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, "FINISHED", end_time=1_700_000_001_000)
        return run_id

    def by_bulk(i: int) -> str:
        run_id = bulk.create_run(experiment, f"t{i}", child_run_tags("p", "job", f"t{i}"),
                                 params)
        bulk.write_run(run_id, _values(keys, i), None, ("FINISHED", 1_700_000_001_000))
        return run_id

    def seen(run_id: str) -> tuple:
        run = client.get_run(run_id)
        history = sorted((m.value, m.step) for m in client.get_metric_history(run_id, keys[0]))
        return (run.data.metrics, run.data.params, run.data.tags, run.info.status,
                run.info.end_time, run.info.run_name, run.info.user_id, history)

    try:
        for _ in range(rounds):
            made: dict[str, list[str]] = {}
            for path, write in (("client", by_client), ("bulk", by_bulk)):
                cpu = time.thread_time()
                made[path] = [write(i) for i in range(runs)]
                per_round[path].append(1e3 * (time.thread_time() - cpu) / runs)
            same = same and all(seen(x) == seen(y) for x, y in zip(made["client"], made["bulk"]))
    finally:
        bulk.close()
    return {"values": EPOCHS * len(keys), "runs": runs, "per_round": per_round,
            "median": {k: statistics.median(v) for k, v in per_round.items()}, "same": same}


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """Table rows: path, per-run CPU per round, median, ratio, check."""
    med = result["median"]
    out = []
    for path, label in (("client", "MlflowClient: create_run, log_batch, set_terminated"),
                        ("bulk", "BulkStore: create_run, write_run "
                                 "(workers/tune/mlflow_bulk.py)")):
        out.append([label, result["values"], result["runs"],
                    " / ".join(f"{v:.2f}" for v in result["per_round"][path]), med[path],
                    med["client"] / med[path],
                    "same run in MLflow" if result["same"] else "MISMATCH"])
    return out
