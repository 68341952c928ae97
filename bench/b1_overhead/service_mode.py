"""(a) the service end to end: ``regtune serve`` in a subprocess (its own local Ray head
with 2 CPUs), REST submit → poll → ``/best``; before the timed submit, the waits for
Ray's dashboard-agent port and for the head to accept a job; and the service with its
head's agent ports moved, for when another Ray holds the default one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.b1_overhead.profiling import DriverProfiler, parse_pyspy
from bench.b1_overhead.workload import SLOTS
from bench.common import (COMPUTE_LOG_ENV, PY, REPO, free_port, read_compute_log,
                          repo_env, stop_process, wait_http)


RAY_AGENT_PORT = 52365  # Ray's default dashboard-agent port; `ray start` here does not move it


def port_listening(port: int) -> bool:
    """Whether any socket on this machine listens on ``port`` (from /proc/net/tcp*)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listening = len(fields) > 3 and fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_port_free(port: int, timeout: float) -> float:
    start = time.monotonic()
    while port_listening(port):
        if time.monotonic() - start > timeout:
            raise RuntimeError(
                f"port {port} (Ray's dashboard agent) is held by another Ray cluster on this "
                "machine; the service's local Ray head would start without a job agent and "
                "refuse every job. Run B1 when no other Ray cluster is up.")
        time.sleep(0.5)
    return time.monotonic() - start


def _dashboard_port(data: Path) -> int:
    """The dashboard port of the Ray head the service started for ``data`` (its cmdline)."""
    from service.launcher.local_head import _temp_dir

    temp_dir = str(_temp_dir(data.resolve()))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--dashboard-port" in argv and temp_dir in argv:
            return int(argv[argv.index("--dashboard-port") + 1])
    raise RuntimeError(f"no Ray head with --temp-dir {temp_dir} found")


def wait_ray_accepts_jobs(data: Path, timeout: float = 90) -> tuple[float, int]:
    """Submit a no-op Ray job to the service's head until one is accepted and has run.

    /readyz answers 200 as soon as the Ray dashboard answers, but the head's job
    agent registers a few seconds later; until then the Jobs API answers 500 "No
    available agent to submit job" and the service fails the job at once. Returns
    (seconds waited, refusals seen).
    """
    import httpx

    start = time.monotonic()
    port = _dashboard_port(data)
    token = (data / "ray_auth_token").read_text().strip()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})
    refusals = 0
    try:
        while time.monotonic() - start < timeout:
            response = http.post("/api/jobs/", json={"entrypoint": "true",
                                                     "entrypoint_num_cpus": 0})
            if response.status_code == 200:
                sid = response.json()["submission_id"]
                while time.monotonic() - start < timeout:
                    status = http.get(f"/api/jobs/{sid}").json().get("status")
                    if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                        return time.monotonic() - start, refusals
                    time.sleep(0.2)
                break
            refusals += 1
            time.sleep(0.5)
    finally:
        http.close()
    raise TimeoutError("the service's Ray head did not accept a job in time (is another Ray "
                       f"cluster holding port {RAY_AGENT_PORT}? see its dashboard_agent.log)")


def wait_standby_ready(data: Path, timeout: float = 60) -> float:
    """Seconds until the service's standby driver says it is ready (its log's "ready"
    line; workers.tune.driver.standby): a service that has been up a while has one
    waiting, and the submit is timed from there, as it is from a head that accepts jobs."""
    import httpx

    start = time.monotonic()
    port = _dashboard_port(data)
    token = (data / "ray_auth_token").read_text().strip()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as http:
        while time.monotonic() - start < timeout:
            for job in http.get("/api/jobs/").json():
                sid = job.get("submission_id") or ""
                if (job.get("metadata") or {}).get("regtune_standby") == "1" and \
                        job.get("status") == "RUNNING":
                    logs = http.get(f"/api/jobs/{sid}/logs").json().get("logs", "")
                    if f"standby {sid}: ready" in logs:
                        return time.monotonic() - start
            time.sleep(0.2)
    raise TimeoutError("the service's standby driver was not ready in time")


def _parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def run_service(spec_json: dict[str, Any], hook_dir: Path, scratch: Path, profile: bool,
                standby: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``standby``: the service as configured by default (one standby driver waiting,
    service.launcher.standby); False: REGTUNE_STANDBY_DRIVERS=0, each job starts its own."""
    import httpx

    tag = "" if standby else "-cold"
    data = scratch / f"svc{tag}"
    log_path = scratch / f"compute-service{tag}.jsonl"
    env = repo_env({"REGTUNE_DATA_DIR": str(data), "REGTUNE_RAY_NUM_CPUS": str(SLOTS),
                    "REGTUNE_STANDBY_DRIVERS": "1" if standby else "0",
                    COMPUTE_LOG_ENV: str(log_path)}, prepend_path=str(hook_dir))
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service_log = scratch / f"service{tag}.log"
    try:
        waited, moved = wait_port_free(RAY_AGENT_PORT, 30), False
        cmd = [str(Path(PY).with_name("regtune")), "serve"]
    except RuntimeError:  # another Ray holds it: move the head's agent ports, say so
        waited, moved = 30.0, True
        cmd = [PY, "-m", "bench.b1_overhead", "serve-moved-agent-ports"]
    t = time.monotonic()
    with open(service_log, "wb") as log:
        proc = subprocess.Popen(cmd + ["--host", "127.0.0.1", "--port", str(port)], env=env,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"mode": f"service{tag}", "agent_port_wait_s": waited,
                              "agent_ports_moved": moved}
    try:
        wait_http(url + "/readyz", 240, proc, service_log)
        result["service_start_s"] = time.monotonic() - t
        result["ray_jobs_ready_s"], result["ray_refusals"] = wait_ray_accepts_jobs(data)
        if standby:
            result["standby_ready_s"] = wait_standby_ready(data)
        http = httpx.Client(base_url=url, timeout=60)
        t0 = time.time()
        response = http.post("/v1/jobs", json=spec_json)
        response.raise_for_status()
        job_id = response.json()["id"]
        profiler = DriverProfiler(job_id, scratch / "driver.pyspy") if profile else None
        if profiler:
            profiler.start()
        deadline = time.monotonic() + 1200
        while True:
            job = http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']}")
            time.sleep(0.1)
        best = http.get(f"/v1/jobs/{job_id}/best")
        t1 = time.time()
        if job["status"] != "succeeded" or best.status_code != 200:
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')} "
                               f"(/best {best.status_code})")
        trials = http.get(f"/v1/jobs/{job_id}/trials").json()
        events = _parse_sse(http.get(f"/v1/jobs/{job_id}/events",
                                     params={"follow": "false"}).text)
        http.close()
        if profiler:
            profiler.stop()
            profiler.join(timeout=30)
            result["profile"] = {"pid": profiler.pid, "error": profiler.error,
                                 "found_after_s": profiler.found_after,
                                 "samples": parse_pyspy(scratch / "driver.pyspy")}
        result.update(start=t0, end=t1, wall=t1 - t0, job_id=job_id, events=events,
                      trials=len(trials),
                      completed=sum(1 for tr in trials if tr["status"] == "completed"))
    finally:
        stop_process(proc, timeout=90)
    return result, read_compute_log(log_path)


def serve_moved_agent_ports(argv: list[str]) -> int:
    """``regtune serve`` with the local head's agent ports on free ports (the proposed fix).

    Used only when another Ray on the machine holds Ray's default agent port: the
    service as it is would start a head that refuses every job.
    """
    from service.cli import main
    from service.launcher import local_head

    original = local_head.LocalRayHead.command

    def command(self: Any) -> list[str]:
        return original(self) + [
            "--dashboard-agent-listen-port", str(local_head.free_port()),
            "--dashboard-agent-grpc-port", str(local_head.free_port()),
            "--runtime-env-agent-port", str(local_head.free_port()),
            "--metrics-export-port", str(local_head.free_port())]

    local_head.LocalRayHead.command = command
    sys.argv = ["regtune", "serve", *argv]
    main()
    return 0
