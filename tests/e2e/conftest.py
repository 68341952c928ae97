"""The real service in a subprocess: real local Ray, real MLflow on SQLite, real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from service.launcher.local_head import free_port

HERE = Path(__file__).parent


@dataclass
class LiveService:
    url: str
    data_dir: Path
    process: subprocess.Popen
    probe: Path
    http: httpx.Client
    tokens: dict[str, str]

    def as_user(self, name: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    def submit(self, spec: dict[str, Any] | str, **headers: str) -> httpx.Response:
        if isinstance(spec, str):
            return self.http.post("/v1/jobs", content=spec,
                                  headers={"Content-Type": "application/yaml", **headers})
        return self.http.post("/v1/jobs", json=spec, headers=headers)

    def wait(self, job_id: str, until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in until:
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not in {until} after {timeout}s: {job}")

    def submission(self, job_id: str) -> str:
        """The Ray job running ``job_id``'s driver now: a standby's, or regtune-<id>[-n]."""
        return submission_of(self.http, job_id)

    def ray_dashboard(self) -> tuple[str, dict[str, str]]:
        """The owned Ray head's Jobs/State API, found from its log and token file."""
        log = (self.data_dir / "logs" / "ray-head.log").read_text()
        port = re.findall(r"127\.0\.0\.1:(\d+)", log.split("dashboard at")[-1])[0]
        token = (self.data_dir / "ray_auth_token").read_text().strip()
        return f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}


def submission_of(http: httpx.Client, job_id: str) -> str:
    """The submission id of the job's latest job_launched / job_resumed event."""
    text = http.get(f"/v1/jobs/{job_id}/events", params={"follow": "false"}).text
    found = [json.loads(line[6:])["payload"]["submission_id"] for line in text.splitlines()
             if line.startswith("data: ") and '"submission_id"' in line]
    assert found, f"job {job_id} was never launched"
    return found[-1]


def regtune_cli(*args: str, env: dict[str, str]) -> str:
    regtune = str(Path(sys.executable).with_name("regtune"))
    out = subprocess.run([regtune, *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def add_user(name: str, env: dict[str, str], admin: bool = False) -> str:
    """`regtune users add`: the token is the last line of its output."""
    output = regtune_cli("users", "add", name, *(["--admin"] if admin else []), env=env)
    return output.strip().splitlines()[-1]


def start_service(data_dir: Path, extra_env: dict[str, str] | None = None,
                  users: dict[str, bool] | None = None) -> LiveService:
    port = free_port()
    probe = data_dir / "probe.json"
    env = {**os.environ, "REGTUNE_DATA_DIR": str(data_dir), "REGTUNE_PROBE_OUT": str(probe),
           "REGTUNE_SUPERVISOR_INTERVAL_S": "0.5", "REGTUNE_RAY_NUM_CPUS": "2",
           **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens = {name: add_user(name, env, admin) for name, admin in (users or {}).items()}
    log = open(data_dir / "service.log", "wb")
    process = subprocess.Popen([sys.executable, str(HERE / "serve_probe.py"), "--port", str(port),
                                "--host", "127.0.0.1"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError((data_dir / "service.log").read_text()[-3000:])
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                first = next(iter(tokens), None)
                headers = {"Authorization": f"Bearer {tokens[first]}"} if first else {}
                return LiveService(url, data_dir, process, probe,
                                   httpx.Client(base_url=url, timeout=60, headers=headers),
                                   tokens)
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("service did not become ready: " +
                       (data_dir / "service.log").read_text()[-3000:])


def stop_service(service: LiveService) -> list[str]:
    service.http.close()
    service.process.send_signal(signal.SIGINT)
    try:
        service.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        service.process.kill()
        raise
    return json.loads(service.probe.read_text())


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    # A team deployment: tokens required, users made with the real CLI. `http` is alice's.
    service = start_service(tmp_path_factory.mktemp("regtune-e2e"),
                            {"REGTUNE_AUTH": "required"},
                            users={"alice": False, "bob": False, "carol": False, "root": True})
    yield service
    loaded = stop_service(service)
    # The API process ran whole jobs and never imported torch, ray or the workers.
    assert loaded == [], f"API process loaded {loaded}"
