"""B6 (c): one run's metric values through MLflow's log_batch vs the bulk path.

Part of B6 (``bench.b6_tracking`` runs it and reports it). The same values — 10
epochs × the 18 numbers the driver records per epoch — are written to fresh runs
of one SQLite MLflow store (WAL, as the service sets it), once through
``MlflowClient.log_batch`` (one call per run, as the writer coalesces them) and
once through ``workers.tune.mlflow_bulk.BulkMetrics``, in interleaved rounds. CPU
is this thread's (``time.thread_time``); the check compares what MLflow reads
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
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from search_spaces.catalog import METRICS
    from service.app import init_mlflow
    from workers.tune.mlflow_bulk import BulkMetrics

    scratch.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{scratch / 'bulk.db'}"
    init_mlflow(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("b6-bulk")
    bulk = BulkMetrics.for_uri(uri)
    if bulk is None:
        raise RuntimeError("the bulk path refused MLflow's own SQLite store")
    keys = [*METRICS, "epoch"]  # 18 names, as many as a classification trial records
    per_round: dict[str, list[float]] = {"log_batch": [], "bulk": []}
    same = True
    try:
        for _ in range(rounds):
            a = [client.create_run(experiment).info.run_id for _ in range(runs)]
            b = [client.create_run(experiment).info.run_id for _ in range(runs)]
            cpu = time.thread_time()
            for i, run_id in enumerate(a):
                client.log_batch(run_id, metrics=[Metric(*v) for v in _values(keys, i)])
            per_round["log_batch"].append(1e3 * (time.thread_time() - cpu) / runs)
            cpu = time.thread_time()
            for i, run_id in enumerate(b):
                bulk.log_metrics(run_id, _values(keys, i))
            per_round["bulk"].append(1e3 * (time.thread_time() - cpu) / runs)
            for x, y in zip(a, b):
                same = same and client.get_run(x).data.metrics == client.get_run(y).data.metrics
            key = keys[0]
            same = same and all(
                sorted((m.value, m.step) for m in client.get_metric_history(x, key))
                == sorted((m.value, m.step) for m in client.get_metric_history(y, key))
                for x, y in zip(a, b))
    finally:
        bulk.close()
    return {"values": EPOCHS * len(keys), "runs": runs, "per_round": per_round,
            "median": {k: statistics.median(v) for k, v in per_round.items()}, "same": same}


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """Table rows: path, per-run CPU per round, median, µs per value, ratio, check."""
    med = result["median"]
    out = []
    for path, label in (("log_batch", "MlflowClient.log_batch (one call per run)"),
                        ("bulk", "BulkMetrics.log_metrics (workers/tune/mlflow_bulk.py)")):
        out.append([label, result["values"], result["runs"],
                    " / ".join(f"{v:.2f}" for v in result["per_round"][path]), med[path],
                    1e3 * med[path] / result["values"], med["log_batch"] / med[path],
                    "same metrics and history in MLflow" if result["same"] else "MISMATCH"])
    return out
