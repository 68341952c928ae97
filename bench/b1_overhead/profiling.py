"""Where the service's driver spends its time: py-spy sampling the job's driver process
(found by its command line) while the timed job runs, its samples by what is on the
stack, and the driver's imports timed in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import PY, REPO, repo_env
from bench.pyspy import read_collapsed


def _driver_pid(job_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "workers.tune.driver" in cmd and job_id in cmd and "/bin/sh" not in cmd:
            return int(entry.name)
    return None


class DriverProfiler(threading.Thread):
    """Finds the job's driver process and samples it with py-spy until it exits."""

    RATE = 25

    def __init__(self, job_id: str, out: Path) -> None:
        super().__init__(daemon=True)
        self.job_id, self.out = job_id, out
        self.pid: int | None = None
        self.found_after: float | None = None
        self.error = ""
        self._halt = threading.Event()

    def run(self) -> None:
        spy = Path(PY).with_name("py-spy")
        start = time.monotonic()
        while not self._halt.is_set() and time.monotonic() - start < 120:
            self.pid = _driver_pid(self.job_id)
            if self.pid:
                break
            time.sleep(0.05)
        if not self.pid:
            self.error = "driver process not found"
            return
        self.found_after = time.monotonic() - start
        proc = subprocess.run([str(spy), "record", "-p", str(self.pid), "-r", str(self.RATE),
                               "--nonblocking", "-f", "raw", "-o", str(self.out)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 and not self.out.exists():
            self.error = proc.stderr[-300:]

    def stop(self) -> None:
        self._halt.set()


#: Driver CPU samples by what is on the stack, first match wins (priority order).
#: py-spy names files relative to their sys.path entry: "fit (ray/tune/tuner.py:345)".
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("imports (module loading)", ("_find_and_load",)),
    ("end-of-job figures (workers/tune/figures.py)", ("(workers/tune/figures.py",)),
    ("MLflow (tracking client, its SQLite store)", ("(mlflow/",)),
    ("job store (service/store, SQLAlchemy)", ("(service/store/", "(sqlalchemy/")),
    ("Tune experiment-state snapshot (searcher pickling, sync to storage)",
     ("save_to_dir", "sync_up_experiment_state", "experiment_state.py")),
    ("Tune's own result loggers (json, csv, TensorBoard)", ("(ray/tune/logger/",
                                                          "(tensorboardX/")),
    ("Optuna searcher", ("(optuna/",)),
    ("Tune controller, other", ("(ray/tune/", "(ray/train/", "(ray/air/")),
    ("Ray core (ray.init, object store, RPC)", ("(ray/",)),
)


def parse_pyspy(path: Path) -> dict[str, Any]:
    """Aggregate py-spy's raw (collapsed) stacks: samples per category and top own frames."""
    profile = read_collapsed(path, CATEGORIES)
    return {**profile, "rate": DriverProfiler.RATE} if profile else {}


def measure_driver_imports() -> dict[str, float]:
    """A fresh interpreter importing what the driver imports, in the driver's order."""
    code = r"""
import json, time
steps = {}
t = time.perf_counter()
def step(name):
    global t
    now = time.perf_counter(); steps[name] = now - t; t = now
import workers.tune.driver; step("workers.tune.driver (search_spaces, pydantic)")
import ray; step("ray")
from service.settings import get_settings; from service.store import open_store
step("service.store (SQLAlchemy, Alembic)")
from workers.tune.reporting import MlflowTrialCallback
step("ray.tune (via workers.tune.reporting)")
from mlflow.tracking import MlflowClient; step("mlflow")
import workers.tune.algorithms, workers.tune.schedulers, workers.tune.trainable
from ray.tune.search.optuna import OptunaSearch; step("optuna + Tune searchers")
print(json.dumps(steps))
"""
    out = subprocess.run([PY, "-c", code], env=repo_env(), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])
