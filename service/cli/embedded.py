"""``regtune up``: the whole embedded stack on one machine, for ``make run``.

Starts the API (which starts and owns a local Ray head), the MLflow UI on the
same SQLite store, submits a spec over HTTP like any user, follows it, prints
the best configuration and the MLflow link, and keeps serving until Ctrl-C,
then stops everything it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from service.cli.client import Client, ProgressPrinter
from service.settings import Settings


def start_mlflow_ui(settings: Settings, port: int) -> subprocess.Popen | None:
    """The MLflow UI over the embedded store; None when a tracking server is configured."""
    if settings.mlflow_uri.startswith(("http://", "https://")):
        return None
    log = open(settings.data_path / "logs" / "mlflow-ui.log", "ab")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", settings.mlflow_uri,
           "--default-artifact-root", settings.artifact_root or "", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(f"warning: the MLflow UI did not come up; see {settings.data_path}/logs/mlflow-ui.log",
          file=sys.stderr)
    return process


def stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mlflow_link(ui: str, job: dict) -> str:
    ref = job["mlflow"]
    if ref.get("experiment_id") and ref.get("parent_run_id"):
        return f"{ui}/#/experiments/{ref['experiment_id']}/runs/{ref['parent_run_id']}"
    return ui


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_embedded(settings: Settings, spec: Path, mlflow_port: int, exit_when_done: bool) -> int:
    import uvicorn

    # SIGTERM (a service manager, `timeout`, `kill`) stops everything as Ctrl-C does:
    # by default it would end this process at once and leave the MLflow UI (its own
    # session) and the Ray head running. uvicorn, in a thread here, cannot catch it.
    signal.signal(signal.SIGTERM, _interrupt)

    from service.app import create_app, init_mlflow

    settings.check()
    (settings.data_path / "logs").mkdir(parents=True, exist_ok=True)
    print(f"regtune: data directory {settings.data_path}", flush=True)
    init_mlflow(settings.mlflow_uri)
    ui_process = start_mlflow_ui(settings, mlflow_port)
    ui = (settings.mlflow_uri if ui_process is None else f"http://127.0.0.1:{mlflow_port}")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host,
                                           port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="regtune-api", daemon=True)
    thread.start()
    code = 1
    try:
        deadline = time.monotonic() + 180
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                print("regtune: the API did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        api = f"http://{settings.host}:{settings.port}"
        print(f"regtune: API {api} (docs {api}/docs), MLflow UI {ui}", flush=True)
        client = Client(api)
        job = client.submit(spec)
        print(f"regtune: submitted {spec} as job {job['id']}", flush=True)
        printer = ProgressPrinter(sys.stdout)
        job = client.wait(job["id"], printer)
        printer.close()
        print(f"regtune: job {job['id']} {job['status']}", flush=True)
        if job["status"] == "succeeded":
            best = client.best(job["id"])
            print("best configuration:")
            print(json.dumps({"config": best["config"], "metric": best["metric"],
                              "mlflow_run_id": best["mlflow_run_id"]}, indent=2))
            code = 0
        else:
            print(job.get("error") or "", file=sys.stderr)
        print(f"MLflow UI: {mlflow_link(ui, job)}", flush=True)
        if not exit_when_done:
            print("regtune: serving; Ctrl-C stops everything it started", flush=True)
            while thread.is_alive():
                time.sleep(1)
        return code
    except KeyboardInterrupt:
        print("\nregtune: stopping", flush=True)
        return code
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        stop_process(ui_process)
