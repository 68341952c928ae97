"""B6 (c): one child run, made, filled and ended through MLflow's client vs the bulk path,
beside SQLite's own floor for the same rows.

Part of B6 (``bench.b6_tracking`` runs it and reports it). The same run — the
driver's child-run tags, 13 params, 10 epochs × the 18 numbers the driver records
per epoch, then FINISHED — is written to one SQLite MLflow store (WAL, as the
service sets it), once through ``MlflowClient`` (``create_run``, one ``log_batch``
with the params and every value, as the writer coalesces them, ``set_terminated``)
and once through ``workers.tune.mlflow_bulk.BulkStore`` (``create_run`` with the
params, one ``write_run`` with the values and the end), in interleaved rounds.
A third path is the floor: the same rows, their parameter tuples built before the
clock starts, sent through ``sqlite3`` alone with the bulk path's own statements, a
whole round of runs in one transaction (what no writer that makes each run as its
trial starts can beat). It shows how much of a run's cost is SQLite's work on MLflow's
schema (``metrics`` keeps four B-trees per value: the table, its primary key and two
indexes), which no Python on top can remove.
CPU is this thread's (``time.thread_time``); the check compares what MLflow reads
back for the three runs of each triple.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
import uuid
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
    per_round: dict[str, list[float]] = {"client": [], "bulk": [], "floor": []}
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

    floor = _Floor(bulk, scratch / "bulk.db", experiment, params)

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
            prepared = [floor.prepare(i, _values(keys, i)) for i in range(runs)]
            cpu = time.thread_time()
            made["floor"] = floor.write(prepared)
            per_round["floor"].append(1e3 * (time.thread_time() - cpu) / runs)
            same = same and all(seen(x) == seen(y) == seen(z) for x, y, z in
                                zip(made["client"], made["bulk"], made["floor"]))
    finally:
        floor.close()
        bulk.close()
    return {"values": EPOCHS * len(keys), "runs": runs, "per_round": per_round,
            "median": {k: statistics.median(v) for k, v in per_round.items()}, "same": same}


class _Floor:
    """SQLite alone: a round's runs as parameter tuples, in one transaction, through the
    bulk path's compiled statements and ``sqlite3``'s ``executemany``."""

    def __init__(self, bulk: Any, path: Path, experiment: str, params: dict[str, str]) -> None:
        from workers.tune.mlflow_bulk import _Many

        self.con = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.experiment, self.params = experiment, params
        with bulk.engine.connect() as conn:
            self.location = conn.execute(bulk._experiment_of, {
                "b_experiment": int(experiment)}).first().artifact_location
        self.run = _Many(bulk.engine.dialect, bulk._insert_run)
        self.many = {"tags": bulk._insert_tags, "params": bulk._insert_params,
                     "metrics": bulk._insert_metrics, "latest": bulk._upsert_latest}

    def prepare(self, i: int, values: list[tuple[str, float, int, int]]) -> tuple[Any, ...]:
        from workers.tune.mlflow_rows import RUN_NAME_TAG, metric_rows, newest_per_key, run_row
        from workers.tune.mlflow_runs import child_run_tags

        run_id = uuid.uuid4().hex
        tags = {**child_run_tags("p", "job", f"t{i}"), RUN_NAME_TAG: f"t{i}"}
        row = {**run_row(run_id, self.experiment, f"t{i}", tags, self.location),
               "status": "FINISHED", "end_time": 1_700_000_001_000}
        kv = lambda d: [{"key": k, "value": v, "run_uuid": run_id} for k, v in d.items()]  # noqa: E731
        metrics = metric_rows(run_id, values)
        rows = {"tags": kv(tags), "params": kv(self.params), "metrics": metrics,
                "latest": newest_per_key(metrics)}
        return run_id, self.run.row(row), {k: [self.many[k].row(r) for r in v]
                                           for k, v in rows.items()}

    def write(self, prepared: list[tuple[Any, ...]]) -> list[str]:
        self.con.execute("BEGIN")
        for _, run, tuples in prepared:
            self.con.execute(self.run.sql, run)
            for name, many in self.many.items():
                self.con.executemany(many.sql, tuples[name])
        self.con.execute("COMMIT")
        return [run_id for run_id, _, _ in prepared]

    def close(self) -> None:
        self.con.close()


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """Table rows: path, per-run CPU per round, median, ratio, check."""
    med = result["median"]
    out = []
    for path, label in (("client", "MlflowClient: create_run, log_batch, set_terminated"),
                        ("bulk", "BulkStore: create_run, write_run "
                                 "(workers/tune/mlflow_bulk.py)"),
                        ("floor", "floor: sqlite3 alone, the same rows as prepared tuples, "
                                  "the round's runs in one transaction")):
        out.append([label, result["values"], result["runs"],
                    " / ".join(f"{v:.2f}" for v in result["per_round"][path]), med[path],
                    med["client"] / med[path],
                    "same run in MLflow" if result["same"] else "MISMATCH"])
    return out


def floor_note(bulk: dict[str, Any], per_run: dict[str, tuple[dict[str, float], float]]
               ) -> str:
    """What SQLite alone costs of a trial (``per_run``: B6's cost runs, label ->
    (writer CPU by call, training ms per trial)): the floor under any writer."""
    med = bulk["median"]
    shares = ", ".join(
        f"{label.split(' (')[0]}: {100 * med['floor'] / train:.1f}% of its {train:.0f} ms "
        f"of training (the bulk path's {med['bulk']:.2f} ms: {100 * med['bulk'] / train:.1f}%)"
        for label, (_, train) in per_run.items() if label.endswith(", background"))
    return (f"SQLite's own floor (the 'floor' row of the one-run table: the same rows as "
            f"prepared tuples, a round in one transaction): {med['floor']:.2f} ms of CPU per "
            f"run of {bulk['values']} values, {med['bulk'] / med['floor']:.1f}× less than the "
            f"bulk path; per trial that is {shares}. MLflow's schema keeps four B-trees per "
            f"metric value (the table, its primary key and two indexes).")
