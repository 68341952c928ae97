"""`regtune up` (what `make run` runs) stopped by SIGTERM leaves nothing running.

It starts three things in sessions of their own: the API (a thread), the MLflow
UI and a local Ray head. A service manager or `timeout` stops it with SIGTERM,
which must stop all of them, as Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.launcher.local_head import _temp_dir, free_port
from tests.procs import processes_mentioning

pytestmark = pytest.mark.e2e

SPEC = {"name": "e2e-up", "task": "digits", "objective": {"metric": "val_accuracy"},
        "model": {"hidden_sizes": [16]}, "train": {"epochs": 2, "batch_size": 256},
        "space": {"reg_lambda": {"low": 1e-5, "high": 1e-2, "log": True}},
        "search": {"algorithm": "random", "num_trials": 2, "max_concurrent": 2,
                   "scheduler": "none", "seed": 0}}


def test_sigterm_stops_the_api_the_mlflow_ui_and_the_ray_head(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    data = tmp_path / "data"
    env = {**os.environ, "REGTUNE_RAY_NUM_CPUS": "2", "REGTUNE_SUPERVISOR_INTERVAL_S": "0.5"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "regtune"), "up", str(spec), "--data-dir", str(data),
             "--port", str(free_port()), "--mlflow-port", str(free_port())],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "regtune: serving" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        # The MLflow UI and the Ray head name the data directory on their command lines.
        assert processes_mentioning(f"sqlite:///{data}/mlflow.db")
        ray_dir = str(_temp_dir(data.resolve()))
        assert processes_mentioning(ray_dir)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (processes_mentioning(str(data))
                                               or processes_mentioning(ray_dir)):
            time.sleep(0.5)
        left = processes_mentioning(str(data)) + processes_mentioning(ray_dir)
        assert not left, [open(f"/proc/{p}/cmdline", "rb").read() for p in left]
        assert "best configuration" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
