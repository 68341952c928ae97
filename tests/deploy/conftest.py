"""The compose topology as native processes on 127.0.0.1, shared by the tests that need it.

PostgreSQL is the real server on 127.0.0.1:5432 with two fresh databases (regtune's
created here, MLflow's by docker/postgres/10-create-mlflow-db.sh, the script the
Compose postgres service runs); ``mlflow server`` on it; a Ray head with no CPUs or
GPUs; a Ray worker node that advertises 2 CPUs and 2 GPUs; ``regtune serve`` with
tokens required. Each command line comes from ``topology.py``, as in
docker-compose.yml. One job runs on it (4 trials at ``{cpu: 0.5, gpu: 0.5}``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from tests.deploy import native, topology
from tests.pg import admin_connection

REPO = Path(__file__).resolve().parents[2]
#: Seconds per phase of the native stack, printed at the end of the run.
TIMINGS: dict[str, float] = {}

SPEC: dict[str, Any] = {
    "name": "deploy-topology", "task": "digits",
    "objective": {"metric": "val_accuracy", "mode": "max"},
    "train": {"epochs": 2, "batch_size": 128},
    "space": {"reg_lambda": {"low": 1e-5, "high": 1e-2, "log": True}},
    "search": {"algorithm": "random", "num_trials": 4, "max_concurrent": 4,
               "scheduler": "none", "seed": 0},
    "resources": {"cpu": 0.5, "gpu": 0.5},
}


@dataclass
class Stack:
    values: dict[str, Any]
    processes: native.Processes
    api: httpx.Client
    token: str
    ray_headers: dict[str, str]
    tmp: Path
    job: dict[str, Any] | None = None

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.values['mlflow_port']}"

    @property
    def ray_url(self) -> str:
        return f"http://127.0.0.1:{self.values['dashboard_port']}"

    def dsn(self, db: str) -> str:
        return (f"host={native.PG_HOST} port={native.PG_PORT} user={self.values['pg_user']} "
                f"dbname={db}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.tail(2500)}" for p in self.processes.started)


def _wait_job(api: httpx.Client, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = api.get(f"/v1/jobs/{job_id}")
        # An error answer (a 5xx, say) must fail with what it said, not a KeyError.
        assert response.status_code == 200, f"{response.status_code}: {response.text[:2000]}"
        job = response.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout}s")


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    t0 = time.monotonic()
    try:
        admin, pg_user = admin_connection()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {native.PG_HOST}:{native.PG_PORT}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
    suffix = secrets.token_hex(4)
    regtune_db, mlflow_db = f"regtune_it_{suffix}", f"mlflow_it_{suffix}"
    tmp = Path(tempfile.mkdtemp(prefix="regtune-deploy-"))
    # Ray's unix sockets live under its temp dir: keep the path short.
    ray_temp = Path(tempfile.mkdtemp(prefix="rgd-", dir="/tmp"))
    values = native.native_values(tmp, pg_user, regtune_db, mlflow_db, ray_temp)
    for key in ("storage_path", "data_root", "data_dir", "artifacts_dir"):
        Path(values[key]).mkdir(parents=True, exist_ok=True)
    processes = native.Processes(tmp / "logs")
    api = None
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{regtune_db}"')
        # MLflow's database comes from the script the Compose postgres service runs.
        _, pg_env, pg_health = native.command(topology.POSTGRES, values)
        script = subprocess.run(["sh", str(REPO / topology.POSTGRES_INIT_SCRIPT)],
                                env={**pg_env, "PGHOST": native.PG_HOST,
                                     "PGPORT": str(native.PG_PORT)},
                                capture_output=True, text=True, timeout=60)
        assert script.returncode == 0, script.stderr
        assert native.database_exists(admin, mlflow_db), script.stdout + script.stderr
        assert pg_health is not None
        assert subprocess.run(pg_health, env=pg_env, timeout=30).returncode == 0

        def start(process: topology.Process) -> native.Started:
            argv, env, health = native.command(process, values)
            return processes.start(process.service, argv, env, health)

        argv, api_env, health = native.command(topology.API, values)
        api_env["REGTUNE_SUPERVISOR_INTERVAL_S"] = "0.5"  # a tunable; keeps the test quick
        # Independent starts overlap: MLflow, the head, and `regtune users add` on the
        # job store (as `docker compose exec api regtune users add` does).
        mlflow = start(topology.MLFLOW)
        head = start(topology.RAY_HEAD)
        users = subprocess.Popen([str(native.BIN / "regtune"), "users", "add", "deployer"],
                                 env=api_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        processes.wait_healthy(head, 120)
        TIMINGS["ray head healthy (s since start)"] = time.monotonic() - t0
        worker = start(topology.RAY_WORKER)
        processes.wait_healthy(mlflow, 120)
        TIMINGS["mlflow healthy (s since start)"] = time.monotonic() - t0
        out, err = users.communicate(timeout=120)
        assert users.returncode == 0, err
        token = out.strip().splitlines()[-1]  # the token is the last line
        api_process = processes.start("api", argv, api_env, health)
        processes.wait_healthy(worker, 120)
        TIMINGS["ray worker healthy (s since start)"] = time.monotonic() - t0
        processes.wait_healthy(api_process, 120)
        TIMINGS["api healthy (s since start)"] = time.monotonic() - t0
        api = httpx.Client(base_url=f"http://127.0.0.1:{values['api_port']}", timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
        TIMINGS["stack up (s since start)"] = time.monotonic() - t0
        yield Stack(values, processes, api, token,
                    {"Authorization": f"Bearer {values['ray_token']}"}, tmp)
    finally:
        if api is not None:
            api.close()
        t_stop = time.monotonic()
        survivors = processes.stop_all()
        TIMINGS["stack stopped"] = time.monotonic() - t_stop
        for db in (regtune_db, mlflow_db):
            try:
                native.drop_database(admin, db)
            except psycopg2.Error:
                pass
        dropped = not any(native.database_exists(admin, db) for db in (regtune_db, mlflow_db))
        admin.close()
        shutil.rmtree(ray_temp, ignore_errors=True)
        if os.environ.get("REGTUNE_KEEP_DEPLOY_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        assert survivors == [], f"processes outlived the stack: {survivors}"
        assert dropped, "the test databases were not dropped"


@pytest.fixture(scope="package")
def finished(stack: Stack) -> Stack:
    """The job of SPEC, submitted over HTTP and run to its end (once per package run)."""
    if stack.job is None:
        t0 = time.monotonic()
        response = stack.api.post("/v1/jobs", json=SPEC)
        assert response.status_code == 201, response.text
        job = _wait_job(stack.api, response.json()["id"], timeout=240)
        TIMINGS["job submitted -> succeeded"] = time.monotonic() - t0
        assert job["status"] == "succeeded", (job.get("error"), stack.logs())
        stack.job = job
    return stack


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("deploy topology timings")
        for phase, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{phase:<36} {seconds:7.1f} s")
