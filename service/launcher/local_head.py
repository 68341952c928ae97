"""A single-node Ray head that the service starts, owns, and stops.

Started as ``ray start --head --block`` in its own process group, so stopping it
ends exactly the processes it started (``ray stop`` would end every Ray process
on the machine, a test cluster or a colleague's too). Token authentication is
on: the token is generated into the data directory, and drivers inherit it from
the raylet's environment.

The head starts at a lower CPU priority (``nice``, REGTUNE_RAY_NICE, default 10),
which every process it starts inherits: raylet, drivers, trials. On the single
machine of the embedded stack training saturates every core, and the API, at
normal priority, then still answers promptly; when nothing else wants the CPU the
trials get all of it, so training loses next to nothing (bench B5).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.launcher import proctree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_token(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def _temp_dir(data_path: Path) -> Path:
    # Ray's unix sockets live under the temp dir, and socket paths are limited to
    # ~107 bytes; a deep data dir gets a short, stable directory under /tmp.
    candidate = data_path / "ray"
    if len(str(candidate)) <= 40:
        return candidate
    digest = hashlib.sha1(str(data_path).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"regtune-ray-{digest}"


class LocalRayHead:
    def __init__(self, data_path: Path, *, num_cpus: int | None = None,
                 num_gpus: int | None = None, nice: int = 0) -> None:
        self.data_path = data_path
        self.token_path = data_path / "ray_auth_token"
        self.token = ensure_token(self.token_path)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.temp_dir = _temp_dir(data_path)
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.nice = nice
        self.process: subprocess.Popen | None = None
        self.log_path = data_path / "logs" / "ray-head.log"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_USAGE_STATS_ENABLED": "0"}

    def command(self) -> list[str]:
        ray_cli = str(Path(sys.executable).with_name("ray"))
        if not Path(ray_cli).exists():
            ray_cli = shutil.which("ray") or "ray"
        cmd = [ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
               "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
               "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
               # Ray's agents default to fixed ports (52365, ...): a second Ray on the
               # machine would leave this head refusing every job. Take free ones.
               "--dashboard-agent-listen-port", str(free_port()),
               "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()),
               "--metrics-export-port", str(free_port())]
        if self.num_cpus is not None:
            cmd += ["--num-cpus", str(self.num_cpus)]
        if self.num_gpus is not None:
            cmd += ["--num-gpus", str(self.num_gpus)]
        if self.nice:
            # `nice` execs ray, so the pid (and process group) is still ray's; every
            # process ray starts inherits the niceness.
            cmd = [shutil.which("nice") or "nice", "-n", str(self.nice), *cmd]
        return cmd

    def start(self, timeout: float = 120.0) -> None:
        """Start the head and wait until its Jobs API answers."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start ``ray start`` and return at once: the caller may do other work (the
        service makes MLflow's tables) while the head boots, then :meth:`wait_ready`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), env=self.env(), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the launched head's Jobs API answers; stop it and raise if it does not."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                if httpx.get(f"{self.dashboard_url}/api/jobs/", headers=headers,
                             timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the local Ray head did not come up in {timeout:.0f}s; "
                           f"see {self.log_path}")

    def stop(self, grace: float = 1.0, drivers_grace: float = 5.0) -> None:
        """End the head and everything it started, drivers included.

        Job drivers run in sessions of their own (Ray's job agent starts them so),
        out of reach of a signal to the head's group, and one left behind spins on
        the lost GCS for a minute. So they are found first, through the process tree
        (:mod:`service.launcher.proctree`), and given ``drivers_grace`` seconds to end
        on their own while the head still runs: a driver that has reported its job's
        answer is still logging figures to MLflow and finishing its parent run
        (1-2 s). Then they get SIGTERM, the head's group too, and whatever is left
        after ``grace`` gets SIGKILL.

        Why a short ``grace``: the head's processes do their part of a SIGTERM within
        milliseconds (the raylet's log shows its node unregistered and its agents
        ended 16 ms after the signal), yet ``ray start --block``, the raylet and the
        GCS then linger for 8 s and more; a stop used to wait 5 s for them every
        time, then SIGKILL them anyway. Nothing is lost by not waiting: the head
        holds no state the service reads later (the job store, MLflow and Tune's
        experiment snapshots live in the data directory). ``ray stop`` also ends
        with SIGKILL.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        pgid = os.getpgid(process.pid)
        drivers = [p for p in proctree.descendants(process.pid) if p.pgid != pgid]
        deadline = time.monotonic() + drivers_grace
        while time.monotonic() < deadline and any(map(proctree.alive, drivers)):
            time.sleep(0.1)
        proctree.send(drivers, signal.SIGTERM)
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (_group_alive(process, pgid)
                                               or any(map(proctree.alive, drivers))):
            time.sleep(0.05)
        # Whatever is left (raylet, gcs, workers, a driver ignoring SIGTERM) goes now.
        proctree.send(drivers, signal.SIGKILL)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _group_alive(process: subprocess.Popen, pgid: int) -> bool:
    """Whether any process of the group is left (reaping our own child, the group leader)."""
    if process.poll() is None:
        return True
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
