"""The API over a real SQLite store with a fake launcher: unit tests, no Ray."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import create_app
from service.launcher.base import Launcher, LaunchStatus, submission_id
from service.launcher.local_head import free_port
from service.settings import Settings


class FakeLauncher(Launcher):
    """Records what would have been launched; every driver stays RUNNING until stopped."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.stopped: list[str] = []
        self.healthy = True

    def submit(self, job_id: str, attempt: int = 0) -> str:
        self.submitted.append(job_id)
        return submission_id(job_id, attempt)

    def stop(self, submission: str) -> None:
        self.stopped.append(submission)

    def status(self, submission: str) -> LaunchStatus:
        return LaunchStatus("STOPPED" if submission in self.stopped else "RUNNING")

    def logs(self, submission: str) -> str:
        return f"log of {submission}\n"

    def ping(self) -> bool:
        return self.healthy


def make_settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(data_dir=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                    **overrides)


@pytest.fixture
def launcher() -> FakeLauncher:
    return FakeLauncher()


@pytest.fixture
def client_for(tmp_path: Path, launcher: FakeLauncher):
    """Build a TestClient over an app with the given settings overrides."""
    opened: list[TestClient] = []

    def build(**overrides) -> TestClient:
        app = create_app(make_settings(tmp_path, **overrides), launcher=launcher, supervise=False)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield build
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(client_for) -> TestClient:
    return client_for()


@pytest.fixture(scope="module")
def http_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app served over real HTTP by uvicorn, for schemathesis."""
    tmp = tmp_path_factory.mktemp("api-http")
    app = create_app(make_settings(tmp), launcher=FakeLauncher(), supervise=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


SMALL = {"name": "unit", "task": "digits", "train": {"epochs": 2},
         "space": {"reg_lambda": {"low": 1e-5, "high": 1e-2, "log": True}},
         "search": {"num_trials": 3}}
