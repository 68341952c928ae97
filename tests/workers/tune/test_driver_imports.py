"""On the bulk path the real driver imports MLflow only after the job's answer: before
it, MLflow's import (about 2 s of CPU) would delay the first trial (bench B1's
timeline). A fresh process runs the driver on a local Ray, as a Ray job would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, subprocess, sys, time

subprocess.run([sys.executable, "-c", "from service.settings import get_settings; "
                "from service.app import init_mlflow; init_mlflow(get_settings().mlflow_uri)"],
               check=True)  # the service makes MLflow's store before any driver runs
import ray

from search_spaces import SearchSpec
from service.settings import get_settings
from service.store import open_store
from tests.workers.tune.conftest import tiny

store = open_store(get_settings().database)
spec = SearchSpec.model_validate(tiny("imports"))
job, _ = store.create_job(name=spec.name, owner="o", spec=spec.model_dump(mode="json"),
                          num_trials=2)
store.transition(job.id, from_statuses={"queued"}, to="running")
seen = {}


class FirstMlflowImport:
    def find_spec(self, name, path=None, target=None):
        if "status" not in seen and name.split(".")[0] == "mlflow":
            seen["status"] = store.get_job(job.id).status  # the job, at that moment
        return None


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
assert "mlflow" not in sys.modules
sys.meta_path.insert(0, FirstMlflowImport())
from workers.tune import driver

code = driver.run(job.id)
print(json.dumps({"code": code, "status": store.get_job(job.id).status,
                  "at_first_import": seen.get("status")}))
"""


def test_the_driver_imports_mlflow_only_after_the_answer(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REGTUNE_DATA_DIR": str(tmp_path / "data")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("REGTUNE_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["code"] == 0 and out["status"] == "succeeded"
    # MLflow was imported (the spec artifact, the figures), once the job had its answer.
    assert out["at_first_import"] == "succeeded"
