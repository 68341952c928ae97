"""Start the topology of ``topology.py`` as local processes, and stop exactly those.

Every process starts in its own session (process group). Stopping sends SIGTERM
to the group, then SIGKILL to the group and to every descendant recorded
before, in case one left the group. ``ray stop`` is never used: it ends every
Ray process on the machine, other tests' clusters included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from tests.deploy import topology
from tests.pg import PG_HOST, PG_PORT

BIN = Path(sys.executable).parent
#: Settings a developer's shell might carry; none may leak into the stack.
SCRUB_PREFIXES = ("REGTUNE_", "RAY_", "MLFLOW_")


def free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open together while choosing)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def database_exists(conn: psycopg2.extensions.connection, name: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def drop_database(conn: psycopg2.extensions.connection, name: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(dsn: str) -> set[str]:
    with contextlib.closing(psycopg2.connect(dsn, connect_timeout=5)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row[0] for row in cur.fetchall()}


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat fields after the command name: [state, ppid, ..., starttime at 19]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> dict[int, str]:
    """Every process below pid, from /proc, with its start time (to recognise it later)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in out:
                out[child] = started
                todo.append(child)
    return out


def same_process_alive(pid: int, started: str) -> bool:
    """Still running, and still the process recorded (not a reused pid)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


@dataclass
class Started:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen
    log: Path
    healthcheck: list[str] | None = None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Processes:
    """The processes one test started, stopped in reverse order, whatever happens."""

    log_dir: Path
    started: list[Started] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: Mapping[str, str],
              healthcheck: list[str] | None = None) -> Started:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, env=dict(env), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        entry = Started(name, argv, dict(env), process, log_path, healthcheck)
        self.started.append(entry)
        return entry

    def healthy(self, entry: Started) -> bool:
        assert entry.healthcheck is not None
        try:
            return subprocess.run(entry.healthcheck, env=entry.env, capture_output=True,
                                  timeout=15).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, entry: Started, timeout: float) -> float:
        """Poll the process's health check; returns the seconds it took."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if entry.process.poll() is not None:
                raise RuntimeError(f"{entry.name} exited with {entry.process.returncode}:\n"
                                   f"{entry.tail()}")
            if self.healthy(entry):
                self.remember()
                return time.monotonic() - t0
            time.sleep(0.5)
        raise RuntimeError(f"{entry.name} not healthy after {timeout:.0f}s:\n{entry.tail()}")

    def remember(self) -> None:
        """Record the current descendants, so a process that left its group still goes."""
        for entry in self.started:
            if entry.process.poll() is None:
                self.seen.update(descendants(entry.process.pid))

    def stop_all(self, grace: float = 5.0) -> list[str]:
        """Stop everything; returns descriptions of processes that survived (should be [])."""
        self.remember()
        for entry in reversed(self.started):
            if entry.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(entry.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for entry in reversed(self.started):
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for entry in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                entry.process.wait(timeout=5)
        for pid, started in self.seen.items():
            if same_process_alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        survivors = []
        for pid, started in sorted(self.seen.items()):
            if same_process_alive(pid, started):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                survivors.append(f"{pid}: {cmd[:200].decode(errors='replace')}")
        return survivors


@contextlib.contextmanager
def stopping(processes: Processes) -> Iterator[Processes]:
    try:
        yield processes
    finally:
        processes.stop_all()


def native_values(tmp: Path, pg_user: str, regtune_db: str, mlflow_db: str,
                  ray_temp_dir: Path) -> dict[str, object]:
    (mlflow_port, gcs_port, dashboard_port, api_port, head_agent, head_grpc, head_metrics,
     head_runtime_env, head_client, worker_agent, worker_grpc, worker_metrics,
     worker_runtime_env) = free_ports(13)
    shared = tmp / "shared"
    return {
        "python": sys.executable, "ray": str(BIN / "ray"), "mlflow": str(BIN / "mlflow"),
        "regtune": str(BIN / "regtune"),
        "pg_user": pg_user, "pg_password": "unused-under-trust-auth",
        "pg_host": PG_HOST, "pg_port": PG_PORT, "pg_check_host": PG_HOST,
        "pg_check_port": PG_PORT, "regtune_db": regtune_db, "mlflow_db": mlflow_db,
        "mlflow_host": "127.0.0.1", "mlflow_bind": "127.0.0.1", "mlflow_port": mlflow_port,
        "mlflow_workers": 1, "mlflow_allowed_hosts": "127.0.0.1:*,localhost:*",
        "artifacts_dir": str(tmp / "mlartifacts"),
        "ray_token": os.urandom(32).hex(),
        "ray_head_host": "127.0.0.1", "gcs_port": gcs_port, "node_ip": "127.0.0.1",
        "dashboard_bind": "127.0.0.1", "dashboard_port": dashboard_port,
        "head_agent_port": head_agent, "head_agent_grpc_port": head_grpc,
        "head_metrics_port": head_metrics, "head_runtime_env_port": head_runtime_env,
        "head_client_port": head_client,
        "worker_agent_port": worker_agent, "worker_agent_grpc_port": worker_grpc,
        "worker_metrics_port": worker_metrics, "worker_runtime_env_port": worker_runtime_env,
        "worker_cpus": 2, "worker_gpus": 2,
        "object_store_bytes": 300 * 1024 * 1024, "ray_temp_dir": str(ray_temp_dir),
        "storage_path": str(shared / "ray_results"), "data_root": str(shared / "datasets"),
        "data_dir": str(tmp / "api-data"), "driver_python": sys.executable,
        "api_bind": "127.0.0.1", "api_port": api_port,
    }


def command(process: topology.Process, values: Mapping[str, object]) -> tuple[list[str],
                                                                              dict[str, str],
                                                                              list[str] | None]:
    env = {**base_env(), **topology.render_env(process.env, values)}
    health = (topology.render(process.healthcheck, values)
              if process.healthcheck is not None else None)
    return topology.render(process.argv, values), env, health
