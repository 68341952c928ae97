"""B6 (b): N processes writing to one SQLite MLflow store at once.

Part of B6 (``bench.b6_tracking`` runs it and reports it): does "database is locked"
ever happen, and what does a log_batch cost with 1 and with 8 writers, on a store
initialised first (as the service does), in WAL mode, and on a fresh file that every
writer opens at the same instant.

``python -m bench.b6_concurrency writer`` is one writer process, fed scenarios on
stdin (internal).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import PY, REPO, percentile, repo_env

# --- concurrency ---------------------------------------------------------------------------------
#
# Writer processes are started once and given one scenario after another on stdin, so
# the scenarios (and their repeats, interleaved) cost seconds of logging, not seconds
# of N interpreters importing MLflow on 2 cores.

_SYNC_NORMAL = [False]


def _install_sync_listener() -> None:
    """PRAGMA synchronous=NORMAL on new SQLite connections while _SYNC_NORMAL[0] is set."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _normal(dbapi_conn: Any, _record: Any) -> None:
        if _SYNC_NORMAL[0] and isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")


def write_scenario(task: dict[str, Any]) -> dict[str, Any]:
    """One writer's part of a scenario: wait for "go", then log for task["seconds"]."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    _SYNC_NORMAL[0] = bool(task.get("sync_normal"))
    out: dict[str, Any] = {"batches": 0, "runs": 0, "locked": 0, "errors": [], "latencies": []}
    go = Path(task["go"])
    deadline = time.monotonic() + 300
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    try:
        client = MlflowClient(tracking_uri=task["uri"])
        experiment = client.get_experiment_by_name(task["experiment"])
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = client.create_experiment(task["experiment"])
            except Exception as exc:  # noqa: BLE001 - another writer made it first?
                if "database is locked" in str(exc):
                    raise
                experiment_id = client.get_experiment_by_name(task["experiment"]).experiment_id
    except Exception as exc:  # noqa: BLE001 - counted and reported
        out["locked"] += "database is locked" in str(exc)
        out["errors"].append(f"open: {type(exc).__name__}: {str(exc)[:200]}")
        return out
    bulk = None
    if task.get("bulk"):  # child runs as drivers write them now (workers/tune/mlflow_bulk)
        from workers.tune.mlflow_bulk import BulkStore

        bulk = BulkStore.for_uri(task["uri"])
        if bulk is None:
            out["errors"].append("open: the bulk path refused the store")
            return out
    end = time.monotonic() + float(task["seconds"])
    run_id = None
    step = 0
    while time.monotonic() < end:
        try:
            if run_id is None or step % 10 == 0:
                params = {f"p{k}": str(k) for k in range(13)}
                if bulk is not None:  # as drivers write child runs now
                    if run_id is not None:
                        bulk.write_run(run_id, (), None, ("FINISHED", int(time.time() * 1000)))
                    run_id = bulk.create_run(experiment_id, f"r{step}",
                                             {"regtune.job_id": "bench"}, params)
                else:
                    if run_id is not None:
                        client.set_terminated(run_id, "FINISHED")
                    run = client.create_run(experiment_id, tags={"regtune.job_id": "bench"})
                    run_id = run.info.run_id
                    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
                out["runs"] += 1
            now = int(time.time() * 1000)
            s = time.perf_counter()
            values = [(f"m{k}", 0.5 * k, now, step) for k in range(18)]
            first = {"regtune.node_ip": "127.0.0.1"} if step == 0 else {}
            if bulk is not None:
                bulk.write_run(run_id, values, first)
            else:
                client.log_batch(run_id, metrics=[Metric(*v) for v in values],
                                 tags=[RunTag(k, v) for k, v in first.items()])
            out["latencies"].append(time.perf_counter() - s)
            out["batches"] += 1
        except Exception as exc:  # noqa: BLE001
            if "database is locked" in str(exc):
                out["locked"] += 1
            if len(out["errors"]) < 5:
                out["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
        step += 1
    if bulk is not None:
        bulk.close()
    return out


def writer_main(argv: list[str]) -> int:
    """A writer process: one JSON scenario per stdin line, one JSON result per stdout line."""
    _install_sync_listener()
    import mlflow.tracking  # noqa: F401 - imported before the first scenario starts

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = write_scenario(json.loads(line))
        except Exception as exc:  # noqa: BLE001
            result = {"batches": 0, "runs": 0, "locked": "database is locked" in str(exc),
                      "errors": [f"{type(exc).__name__}: {str(exc)[:200]}"], "latencies": []}
        print(json.dumps(result), flush=True)
    return 0


#: How the store is prepared: as the service does now, or with a proposed change.
STORES = {
    "init": "initialised first, rollback journal (MLflow's default)",
    "fresh": "fresh file, opened by all at once",
    "wal": "initialised first + PRAGMA journal_mode=WAL (as the service does: init_mlflow)",
    "wal_normal": "WAL + synchronous=NORMAL per connection (not applied)",
    "wal_bulk": "WAL (init_mlflow) + runs made, filled and ended by the bulk path, as "
                "drivers write them now (the latency column: the metric write)",
}


class Writers:
    """N persistent writer processes."""

    def __init__(self, n: int) -> None:
        self.procs = [subprocess.Popen([PY, "-m", "bench.b6_concurrency", "writer"],
                                       env=repo_env(), cwd=REPO, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True) for _ in range(n)]
        for p in self.procs:
            if "ready" not in (p.stdout.readline() if p.stdout else ""):
                raise RuntimeError("a writer process did not start")

    def run(self, n: int, task: dict[str, Any]) -> list[dict[str, Any]]:
        for p in self.procs[:n]:
            p.stdin.write(json.dumps(task) + "\n")
            p.stdin.flush()
        time.sleep(0.3)  # every writer is waiting for "go" (it only polls a file)
        Path(task["go"]).write_text("go")
        return [json.loads(p.stdout.readline()) for p in self.procs[:n]]

    def close(self) -> None:
        for p in self.procs:
            if p.stdin:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def concurrency(writers: Writers, n: int, seconds: float, scratch: Path, store: str,
                tag: str) -> dict[str, Any]:
    fresh = store == "fresh"
    db = scratch / f"mlflow-{tag}.db"
    uri = f"sqlite:///{db}"
    if not fresh:  # as the service does at start: create MLflow's tables once
        template = scratch / "mlflow-template.db"
        if not template.exists():  # migrations take seconds: run them once, then copy
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=f"sqlite:///{template}")
            client.create_experiment("bench-b6")
            store_obj = getattr(getattr(client, "_tracking_client", None), "store", None)
            if hasattr(store_obj, "engine"):
                store_obj.engine.dispose()  # everything committed; close before copying
        shutil.copyfile(template, db)
    if store.startswith("wal"):
        import sqlite3

        con = sqlite3.connect(db)  # journal_mode=WAL is a property of the file: set once
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
    results = writers.run(n, {"uri": uri, "experiment": "bench-b6", "seconds": seconds,
                              "go": str(scratch / f"go-{tag}"),
                              "sync_normal": store == "wal_normal", "bulk": store == "wal_bulk"})
    latencies = [x for r in results for x in r["latencies"]]
    return {"n": n, "store": store, "batches": sum(r["batches"] for r in results),
            "runs": sum(r["runs"] for r in results),
            "locked": sum(int(r["locked"]) for r in results),
            "errors": [e for r in results for e in r["errors"]][:3],
            "p50": percentile(latencies, 50) * 1e3, "p99": percentile(latencies, 99) * 1e3,
            "seconds": seconds}



if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "writer":
        try:
            sys.exit(writer_main(sys.argv[2:]))
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            sys.exit(1)
    print("usage: python -m bench --only B6 (this module's own entry point is internal)",
          file=sys.stderr)
    sys.exit(2)
