"""B5: the API under load, with 10,000 trials in the store and both cores training.

The real service app (``service.app.create_app``) runs under uvicorn in a
subprocess on 127.0.0.1, with a launcher that only records submits (no Ray) and
no supervisor, over a SQLite job store seeded through the JobStore API with
10,000 finished trials (10 jobs × 1,000, the service's per-job limit; each trial
with a full config, ~20 metrics and its start/finish events). Two background
processes train a digits MLP in a loop the whole time, so the API competes for
the 2 cores as it does on the embedded single machine. They run at the niceness
the embedded service gives its trials (its local Ray head starts under ``nice``,
REGTUNE_RAY_NICE, default 10, and every trial inherits it); the same phases run
again on a second server over a copy of the store with the trainers at nice 0
(the API's own priority), side by side, and once with REGTUNE_AUTH=required.

The load (``bench.load``): httpx clients in 8 threads (8 requests in flight,
closed loop: throughput, and the latency of a saturated server), one endpoint at a
time, each phase bounded by a request count and a time limit; latency is timed
per request by the client. Then submit and status at a fixed offered rate (open
loop, latency counted from when each request was due): the latency at a load
below saturation. Then, for where the time goes, the status phase runs
again for a few seconds under py-spy.

``python -m bench.b5_api_load serve --data-dir D --port P`` is the server (internal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.load import CONCURRENCY, load_phase, open_loop_phase
from bench.pyspy import read_collapsed, shares
from bench.common import (PY, REPO, busy_trainers, command_for, free_port, repo_env,
                          run_in_scratch, stop_process, wait_http)

GOAL_P99_MS = 50.0
GOAL_STATUS_RPS = 500.0

SPEC: dict[str, Any] = {
    "name": "bench-b5-load", "task": "digits",
    "objective": {"loss": "focal", "metric": "val_accuracy", "mode": "max"},
    "train": {"epochs": 10, "batch_size": 64, "lr": 0.1},
    "space": {"focal_gamma": {"low": 0.0, "high": 5.0},
              "reg_lambda": {"low": 1e-6, "high": 1e-2, "log": True},
              "l1_ratio": 0.0, "reg_start_step": {"low": 0, "high": 400, "type": "int"}},
    "search": {"algorithm": "tpe", "num_trials": 1000, "max_concurrent": 2,
               "scheduler": "asha", "seed": 0},
    "resources": {"cpu": 1, "gpu": 0},
}


# --- the server subprocess ------------------------------------------------------------------


def _recording_launcher() -> Any:
    from service.launcher.base import Launcher, LaunchStatus, submission_id

    class RecordingLauncher(Launcher):
        """Records submits; never starts anything (the benchmark has no Ray)."""

        def __init__(self) -> None:
            self.submitted: list[str] = []

        def submit(self, job_id: str, attempt: int = 0) -> str:
            self.submitted.append(job_id)
            return submission_id(job_id, attempt)

        def stop(self, submission: str) -> None:
            return None

        def status(self, submission: str) -> LaunchStatus:
            return LaunchStatus("RUNNING")

        def logs(self, submission: str) -> str:
            return ""

        def ping(self) -> bool:
            return True

    return RecordingLauncher()


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b5_api_load serve")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--auth-required", action="store_true",
                        help="REGTUNE_AUTH=required (every /v1 call needs a bearer token)")
    parser.add_argument("--pure-python", action="store_true",
                        help="uvicorn's h11 parser and asyncio loop, not httptools/uvloop")
    parser.add_argument("--threads-queue", action="store_true",
                        help="no turn on the event loop for submits: their threads queue on "
                             "the store's FIFO lock (before JobStore.serial_writes)")
    args = parser.parse_args(argv)
    if args.threads_queue:  # the comparison row only: the store says it takes writers at once
        import service.store.sql

        opened = service.store.sql.SqlJobStore.__init__

        def init(self: Any, *a: Any, **kw: Any) -> None:
            opened(self, *a, **kw)  # its write lock stays the FIFO lock
            self.serial_writes = False

        service.store.sql.SqlJobStore.__init__ = init  # type: ignore[method-assign]
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(data_dir=args.data_dir, host="127.0.0.1", port=args.port,
                        auth="required" if args.auth_required else "off")
    app = create_app(settings, launcher=_recording_launcher(), supervise=False)
    # log_level "info" as `regtune serve` runs it (one access-log line per request)
    stack = dict(http="h11", loop="asyncio") if args.pure_python else {}  # else "auto"
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info", **stack)
    return 0


# --- seeding the store ----------------------------------------------------------------------


def seed_store(data_dir: Path, n_jobs: int, trials_per_job: int) -> dict[str, Any]:
    """Jobs with finished trials, written through the JobStore API as the driver writes them."""
    import random

    from search_spaces import SearchSpec
    from search_spaces.selection import select
    from service.settings import Settings
    from service.store import open_store

    settings = Settings(data_dir=data_dir)
    store = open_store(settings.database)
    spec = SearchSpec.model_validate(SPEC)
    rng = random.Random(0)
    metric_names = ["train_loss", "val_loss", "loss_gap", "val_accuracy", "train_accuracy",
                    "val_precision", "val_recall", "val_f1", "val_ece", "weight_l1",
                    "weight_l2", "weight_l1_rel", "weight_l2_rel", "weight_sparsity",
                    "epoch", "step", "reg_active", "objective_se"]
    job_ids = []
    start = time.perf_counter()
    for j in range(n_jobs):
        job, _ = store.create_job(name=f"{spec.name}-{j}", owner=f"user{j % 3}",
                                  spec=spec.model_dump(mode="json"), num_trials=trials_per_job)
        store.add_event(job.id, "job_queued", {"owner": job.owner})
        store.transition(job.id, from_statuses={"queued"}, to="running",
                         ray_submission_id=f"regtune-{job.id}")
        for i in range(trials_per_job):
            sampled = {"focal_gamma": rng.uniform(0, 5),
                       "reg_lambda": 10 ** rng.uniform(-6, -2),
                       "reg_start_step": rng.randint(0, 400)}
            epochs = rng.choice([1, 2, 4, 8, 10])
            metrics = {m: rng.random() for m in metric_names}
            metrics.update(epoch=float(epochs), step=float(23 * epochs), reg_active=1.0)
            store.upsert_trial(job.id, f"train_trial_{job.id[:5]}_{i:05d}",
                               status="completed" if epochs == 10 else "stopped",
                               config=spec.resolve_params(sampled), metrics=metrics,
                               iteration=epochs, objective=metrics["val_accuracy"],
                               mlflow_run_id=f"{rng.getrandbits(128):032x}",
                               node="127.0.0.1", gpu_ids=[])
        # as the driver finishes a job: the answer of select() over its trials
        answer = select(spec, store.list_trials(job.id))
        store.transition(job.id, from_statuses={"running"}, to="succeeded", best=answer)
        store.add_event(job.id, "job_succeeded", {"best": answer})
        job_ids.append(job.id)
    seconds = time.perf_counter() - start
    store.close()
    return {"job_ids": job_ids, "trials": n_jobs * trials_per_job, "seconds": seconds}


def _profile(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    spy = Path(PY).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "-p", str(pid), "-r", "50", "--nonblocking",
                             "-f", "raw", "-o", str(out), "-d", str(int(seconds))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: Server CPU samples by what is on the stack, first match wins. py-spy names files
#: relative to their sys.path entry: "execute (sqlalchemy/engine/base.py:1419)".
SERVER_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("spec validation (search_spaces, pydantic models of the spec)", ("(search_spaces/",)),
    ("job store: SQLAlchemy + sqlite3 (queries, row decoding)",
     ("(service/store/", "(sqlalchemy/", "sqlite3")),
    ("response validation + serialisation (FastAPI, pydantic, json)",
     ("serialize_response", "jsonable_encoder", "(pydantic", "(json/")),
    ("access log (logging)", ("(logging/",)),
    ("uvicorn / HTTP parser / event loop I/O", ("(uvicorn/", "(h11/", "(httptools",
                                                 "(uvloop", "(asyncio/", "(selectors")),
    ("starlette/FastAPI routing, middleware, threadpool hand-off",
     ("(starlette/", "(fastapi/", "(anyio/", "(threading")),
    ("prometheus metrics", ("(prometheus_client/",)),
)


def parse_server_profile(path: Path) -> list[list[Any]]:
    return shares(read_collapsed(path, SERVER_CATEGORIES), "categories")


def _own_frames(path: Path, top: int = 6) -> list[list[Any]]:
    return shares(read_collapsed(path, SERVER_CATEGORIES, r"\((service|search_spaces)/",
                                 top), "own_frames")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class _Server:
    """The app under uvicorn in a subprocess, on a free port."""

    def __init__(self, data: Path, log_path: Path, auth_required: bool = False,
                 pure_python: bool = False, threads_queue: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [PY, "-m", "bench.b5_api_load", "serve", "--data-dir", str(data), "--port",
               str(self.port)] + (["--auth-required"] if auth_required else []) \
            + (["--pure-python"] if pure_python else []) + (["--threads-queue"] if threads_queue else [])
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, env=repo_env(), cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT)
        self.log_path = log_path

    def phase(self, make_request: Callable[[Any, int], Any], max_requests: int,
              max_seconds: float) -> dict[str, Any]:
        """:func:`load_phase` against this server, with the server's CPU time per request."""
        before = cpu_seconds(self.process.pid)
        result = load_phase(self.url, make_request, max_requests, max_seconds)
        return self._cpu_per_request(result, before)

    def open_phase(self, make_request: Callable[[Any, int], Any], rate: float,
                   seconds: float) -> dict[str, Any]:
        """:func:`open_loop_phase` against this server, with its CPU time per request."""
        before = cpu_seconds(self.process.pid)
        return self._cpu_per_request(open_loop_phase(self.url, make_request, rate, seconds),
                                     before)

    def _cpu_per_request(self, result: dict[str, Any], before: float) -> dict[str, Any]:
        used = cpu_seconds(self.process.pid) - before
        result["cpu_ms"] = 1e3 * used / result["requests"] if result["requests"] else 0.0
        return result

    def __enter__(self) -> "_Server":
        try:
            wait_http(self.url + "/healthz", 120, self.process, self.log_path)
        except BaseException:
            stop_process(self.process, timeout=30)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.process, timeout=30)


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    return run_in_scratch("b5", _run, quick, out_dir)


def _token_for(data: Path, name: str) -> str:
    """A user and its bearer token in the store at ``data`` (as `regtune users add`)."""
    from service.settings import Settings
    from service.store import open_store

    store = open_store(Settings(data_dir=data).database)
    try:
        return store.create_user(name)[1]
    finally:
        store.close()


def _run(quick: bool, out_dir: Path, scratch: Path) -> dict[str, Any]:
    from service.settings import Settings

    nice = Settings.model_fields["ray_nice"].default  # what the embedded head gives trials
    n_jobs, per_job = (2, 500) if quick else (10, 1000)
    max_requests = 600 if quick else 6000
    phase_s = 2.0 if quick else 8.0
    data = scratch / "svc"
    seeded = seed_store(data, n_jobs, per_job)
    # The same store for the side-by-side servers (submit grows the queue).
    if not quick:
        shutil.copytree(data, scratch / "svc-nice0")
        shutil.copytree(data, scratch / "svc-auth")
        shutil.copytree(data, scratch / "svc-h11")
        shutil.copytree(data, scratch / "svc-threads")
    job_ids = seeded["job_ids"]
    spec_body = json.dumps(SPEC).encode()

    def status(client: Any, i: int) -> Any:
        return client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}")

    def best(client: Any, i: int) -> Any:
        return client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}/best")

    def submit(client: Any, i: int) -> Any:
        return client.post("/v1/jobs", content=spec_body,
                           headers={"Content-Type": "application/json"})

    endpoints = (("status", status), ("best", best), ("submit", submit))

    def limit(name: str) -> int:
        return max_requests // 2 if name == "submit" else max_requests

    phases: dict[str, dict[str, Any]] = {}
    judged: list[str] = []
    with _Server(data, scratch / "server.log") as server:
        url = server.url
        load_phase(url, status, 200, 3.0)  # warm-up: connections, first queries
        phases["status, no background training (reference)"] = server.phase(
            status, max_requests, phase_s / 2)
        with busy_trainers(2, nice=nice):
            time.sleep(1.0)
            for name, fn in endpoints:
                label = f"{name}, trainers at nice {nice} (as the embedded head runs trials)"
                phases[label] = server.phase(fn, limit(name), phase_s)
                judged.append(label)
            for name, fn, rate in (("submit", submit, 50.0), ("status", status, 200.0)):
                phases[f"{name}, offered {rate:.0f} req/s (open loop), trainers at nice "
                       f"{nice}"] = server.open_phase(fn, rate, phase_s)
            if not quick:
                for name, fn in endpoints:
                    spy = _profile(server.process.pid, 5, scratch / f"server-{name}.pyspy")
                    time.sleep(0.5)
                    load_phase(url, fn, 100_000, 5.0)
                    spy.wait(timeout=60)
    def side_by_side(name: str, trainers_nice: int, rows: list[tuple[str, Any, int]],
                     warm: Any = status, **server_kw: Any) -> None:
        """Another server over its own copy of the store, under the same training load."""
        with _Server(scratch / f"svc-{name}", scratch / f"server-{name}.log",
                     **server_kw) as server:
            load_phase(server.url, warm, 200, 3.0)
            with busy_trainers(2, nice=trainers_nice):
                time.sleep(1.0)
                for label, fn, count in rows:
                    phases[label] = server.phase(fn, count, phase_s)

    if not quick:  # the trainers at the API's priority; not judged, so not in --quick
        side_by_side("nice0", 0, [(f"{name}, trainers at nice 0 (same priority as the API)",
                                   fn, limit(name)) for name, fn in endpoints])
        # the same load on uvicorn's pure-Python HTTP stack, side by side
        side_by_side("h11", nice, [(f"{name}, trainers at nice {nice}, uvicorn on h11 + "
                                    "asyncio (before httptools + uvloop)", fn, limit(name))
                                   for name, fn in endpoints], pure_python=True)
        # Submits as they were queued before (threads on the store's lock), submit only.
        side_by_side("threads", nice, [(f"submit, trainers at nice {nice}, no turn on the "
                                        "event loop (threads queue on the store's lock, as "
                                        "before)", submit, limit("submit"))],
                     threads_queue=True)
        token = _token_for(scratch / "svc-auth", "bench")
        headers = {"Authorization": f"Bearer {token}"}

        def status_auth(client: Any, i: int) -> Any:
            return client.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}", headers=headers)

        side_by_side("auth", nice, [("status, REGTUNE_AUTH=required (token looked up per "
                                     f"request), trainers at nice {nice}", status_auth,
                                     max_requests)], warm=status_auth, auth_required=True)

    def meets(labels: list[str]) -> bool:
        ok = all(phases[x]["p99"] < GOAL_P99_MS and phases[x]["ok"] == phases[x]["requests"]
                 for x in labels)
        return ok and phases[labels[0]]["rps"] >= GOAL_STATUS_RPS

    rows = [[name, p["requests"], p["ok"], p["wall"], p["rps"], p["p50"], p["p90"], p["p99"],
             p["max"], p["cpu_ms"]] for name, p in phases.items()]
    met = meets(judged)
    met_nice0 = None if quick else meets([f"{name}, trainers at nice 0 (same priority as "
                                          "the API)" for name, _ in endpoints])
    tables = [{"caption": f"{seeded['trials']:,} trials in the store ({n_jobs} jobs × "
                          f"{per_job}), 2 background processes training (except the reference "
                          f"row), {CONCURRENCY} requests in flight (threads with keep-alive "
                          "httpx clients) unless the row says 'open loop' (requests due at "
                          "the offered rate, latency counted from the due time); latency in "
                          "ms, measured by the client. Each "
                          "group of rows is its own server over its own copy of the seeded "
                          "store",
               "columns": ["endpoint", "requests", "2xx", "wall (s)", "requests/s", "p50",
                           "p90", "p99", "max", "server CPU per request (ms)"],
               "rows": rows}]
    if not quick:
        for label, path in (("GET /v1/jobs/{id}", scratch / "server-status.pyspy"),
                            ("GET /v1/jobs/{id}/best", scratch / "server-best.pyspy"),
                            ("POST /v1/jobs", scratch / "server-submit.pyspy")):
            cats = parse_server_profile(path)
            if cats:
                tables.append({"caption": f"Where the server's CPU goes under {label} load "
                                          "(py-spy, 50 Hz, 5 s, after the timed phases; % of "
                                          "samples)",
                               "columns": ["on the stack", "%"], "rows": cats})
                frames = _own_frames(path)
                if frames:
                    tables.append({"caption": f"{label}: innermost service frame of each "
                                              "sample (top 6, % of samples)",
                                   "columns": ["frame", "%"], "rows": frames})
    notes = [
        f"Store seeded through the JobStore API in {seeded['seconds']:.1f} s "
        f"({1e3 * seeded['seconds'] / seeded['trials']:.2f} ms per upsert_trial, one per "
        "trial with its final config, metrics and status; then each job's answer, computed "
        "with search_spaces.selection.select as the driver does, stored on the job).",
        "status and best rotate over the seeded (succeeded) jobs; submit posts a demo-like "
        "spec as JSON (each creates a queued job and its event; no supervisor runs, so the "
        "queue only grows during the submit phase).",
        "The load generator runs in the benchmark's own process on the same 2 cores, and "
        "uvicorn logs every request at level info as `regtune serve` does. 'server CPU per "
        "request' is the server process's user+system CPU time over the phase ÷ its "
        "requests (from /proc): what a request costs the API, whatever else the machine "
        "runs; the latencies and requests/s also depend on how much CPU the API gets.",
        "Submit answers with the new job's queue position, computed from per-user counts "
        "(SqlJobStore.queue_counts: the queued jobs per owner that the store keeps with "
        "every status change, each owner's oldest by an index seek, then a closed form in "
        "the number of users), not from the queue, which here grows by every submit of "
        "the phase (to about 2,000 jobs), since nobody starts jobs. Writes of the "
        "API process queue on one lock (SQLite has one writer), so submits do not sleep "
        "in SQLite's busy handler.",
        f"Goal: p99 < {GOAL_P99_MS:.0f} ms on submit, status and best under training load, "
        f"≥ {GOAL_STATUS_RPS:.0f} status requests/s, every request answered 2xx. It is "
        f"judged on the closed-loop rows at nice {nice}: the latency of a server kept busy "
        "by 8 clients back to back, where each request waits for the ones ahead of it "
        f"(p50 ≈ {CONCURRENCY} × CPU per request). The open-loop rows are not judged; they "
        "say what latency a user sees at a steady load below that ceiling.",
        "uvicorn runs on httptools and uvloop, as installed with regtune (uvicorn picks "
        "them itself); the 'h11 + asyncio' rows (full mode) are the same load on uvicorn's "
        "pure-Python HTTP parser and asyncio loop, side by side.",
        "Writes of the API process queue on one lock, handed over in arrival order "
        "(service/store/fifo_lock.py), and on SQLite, which writes one transaction at a "
        "time, submits first take their turn on the event loop (an asyncio.Lock), one in a "
        "worker thread at a time; the 'no turn on the event loop' row (full mode) is the "
        "submit load as before that turn, its 8 threads parked on the store's lock.",
    ]
    notes.append(
        f"Background training: the goal is judged on the rows with the trainers at nice "
        f"{nice}, the niceness the embedded service gives its trials (its local Ray head "
        f"starts under `nice -n {nice}`, REGTUNE_RAY_NICE, and every driver and trial "
        "inherits it; the API runs at 0). "
        + ("" if met_nice0 is None else
           "The rows at nice 0 (full mode) are the same load with the trainers at the API's "
           "priority, as trials ran before REGTUNE_RAY_NICE, or as on a machine where "
           f"something else trains at normal priority: there the goal is "
           f"{'met' if met_nice0 else 'not met'}. ")
        + "A cluster deployment (RAY_ADDRESS set) trains on other hosts and the setting "
        "does not apply.")
    if quick:
        notes.append(f"--quick: {seeded['trials']:,} trials instead of 10,000, shorter "
                     "phases, no profile, and no nice-0, REGTUNE_AUTH=required, h11 or no-turn rows.")
    return {"id": "B5", "title": f"API under load ({seeded['trials']:,} trials stored, both "
                                 "cores training)",
            "command": command_for("B5", quick), "tables": tables, "plots": [],
            "notes": notes,
            "goal": f"p99 < {GOAL_P99_MS:.0f} ms for submit, status and best; ≥ "
                    f"{GOAL_STATUS_RPS:.0f} status requests/s",
            "met": met}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve_main(sys.argv[2:]))
    print("usage: python -m bench --only B5 (this module's own entry point is internal)",
          file=sys.stderr)
    sys.exit(2)
