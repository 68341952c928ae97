"""The launcher sends Ray only what the service decides: fixed module, job id, settings."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from service.launcher.base import submission_id
from service.launcher.ray_jobs import RayJobsLauncher
from service.settings import Settings
from tests.procs import processes_mentioning


def recording_launcher(settings: Settings, seen: list[httpx.Request]) -> RayJobsLauncher:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, json={"logs": "hello"})
        if request.method == "GET":
            return httpx.Response(200, json={"status": "RUNNING", "message": ""})
        return httpx.Response(200, json={"submission_id": "x"})

    launcher = RayJobsLauncher("http://ray-head:8265", token="tok",
                               driver_python="/opt/venv/bin/python",
                               driver_env=settings.driver_env())
    launcher.http = httpx.Client(base_url="http://ray-head:8265",
                                 headers={"Authorization": "Bearer tok"},
                                 transport=httpx.MockTransport(handler))
    return launcher


def test_submission_is_built_from_the_job_id_and_settings_only(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql://db/regtune",
                        mlflow_tracking_uri="http://mlflow:5000")
    seen: list[httpx.Request] = []
    launcher = recording_launcher(settings, seen)
    assert launcher.submit("0123456789ab") == "regtune-0123456789ab"
    body = json.loads(seen[0].content)
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert body["entrypoint"] == "/opt/venv/bin/python -m workers.tune.driver --job-id 0123456789ab"
    assert set(body) == {"entrypoint", "submission_id", "runtime_env", "entrypoint_num_cpus",
                         "metadata"}
    assert body["runtime_env"] == {"env_vars": settings.driver_env()}
    assert body["runtime_env"]["env_vars"]["REGTUNE_DATABASE_URL"] == "postgresql://db/regtune"
    assert launcher.status("regtune-0123456789ab").state == "RUNNING"
    assert launcher.logs("regtune-0123456789ab") == "hello"


@pytest.mark.parametrize("hostile", ["0123456789ab; rm -rf /", "$(id)", "../../x", "ABCDEF012345",
                                     "0123456789abc"])
def test_anything_but_a_job_id_is_refused_before_ray_is_called(tmp_path, hostile: str) -> None:
    seen: list[httpx.Request] = []
    launcher = recording_launcher(Settings(data_dir=tmp_path), seen)
    with pytest.raises(ValueError):
        launcher.submit(hostile)
    with pytest.raises(ValueError):
        submission_id(hostile)
    assert seen == []


def test_retries_get_their_own_submission_ids() -> None:
    assert submission_id("0123456789ab", 2) == "regtune-0123456789ab-2"


@pytest.mark.parametrize("host, ok", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                      ("0.0.0.0", False), ("10.1.2.3", False)])
def test_auth_off_only_on_loopback(tmp_path, host: str, ok: bool) -> None:
    settings = Settings(data_dir=tmp_path, host=host, auth="off")
    if ok:
        settings.check()
    else:
        with pytest.raises(ValueError, match="REGTUNE_AUTH=required"):
            settings.check()
    Settings(data_dir=tmp_path, host=host, auth="required").check()


def test_settings_are_not_built_at_import() -> None:
    import subprocess
    import sys

    code = ("import service.settings as s, service.app, service.jobs;"
            "print(s.get_settings.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_local_head_starts_under_nice_so_its_trials_inherit_it(tmp_path, monkeypatch) -> None:
    from service.launcher.local_head import LocalRayHead
    from service.settings import Settings

    monkeypatch.delenv("REGTUNE_RAY_NICE", raising=False)
    assert Settings(_env_file=None).ray_nice == 10
    niced = LocalRayHead(tmp_path, nice=10).command()
    assert Path(niced[0]).name == "nice" and niced[1:3] == ["-n", "10"]
    assert niced[4:7] == ["start", "--head", "--block"]
    plain = LocalRayHead(tmp_path, nice=0).command()
    assert Path(plain[0]).name == "ray" and plain[1:4] == ["start", "--head", "--block"]
    monkeypatch.setenv("REGTUNE_RAY_NICE", "0")
    assert Settings(_env_file=None).ray_nice == 0
    with pytest.raises(ValueError):
        Settings(_env_file=None, ray_nice=20)


def _group_gone(pgid: int, within_s: float = 15.0) -> bool:
    """No process of the group left, once the killed ones are reaped (zombies count)."""
    import os
    import time

    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_local_head_boots_while_the_service_prepares_and_stops_with_its_whole_group(
        tmp_path, monkeypatch) -> None:
    """connect() launches the head, runs ``while_starting`` during its boot (the service
    makes MLflow's tables then), and only then waits for the head; stop() leaves no
    process of the head's group behind."""
    import os

    from service.launcher import connect

    settings = _head_settings(tmp_path, monkeypatch)
    seen: list[tuple[bool, bool]] = []

    def prepare() -> None:
        heads = processes_mentioning(_head_dir(settings), wait_s=10)
        seen.append((bool(heads), (tmp_path / "ray_auth_token").exists()))

    launcher, head = connect(settings, while_starting=prepare)
    try:
        assert seen == [(True, True)]  # ran once, with the head's processes already started
        assert launcher.ping()
        pgid = os.getpgid(head.process.pid)
    finally:
        launcher.close()
        head.stop()
    assert head.process is None and _group_gone(pgid)


def test_local_head_is_stopped_when_the_work_during_its_boot_fails(tmp_path, monkeypatch) -> None:
    from service.launcher import connect

    settings = _head_settings(tmp_path, monkeypatch)
    groups: list[int] = []

    def fail() -> None:
        import os

        groups.extend({os.getpgid(p) for p in processes_mentioning(_head_dir(settings),
                                                                     wait_s=10)})
        raise RuntimeError("MLflow's store is unreachable")

    with pytest.raises(RuntimeError, match="unreachable"):
        connect(settings, while_starting=fail)
    assert groups and all(_group_gone(g) for g in groups)


def _head_settings(tmp_path: Path, monkeypatch) -> Settings:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return Settings(_env_file=None, data_dir=tmp_path, ray_num_cpus=1)


def _head_dir(settings: Settings) -> str:
    """The head's --temp-dir: it is on the command line of every process the head starts."""
    from service.launcher.local_head import _temp_dir

    return str(_temp_dir(settings.data_path))


def test_stopping_the_head_ends_its_job_drivers_after_letting_finishing_ones_end(
        tmp_path, monkeypatch) -> None:
    """Ray starts each job's driver in a session of its own, out of reach of the head's
    process group: stop() must end them too (one left behind spins on the lost GCS),
    after giving a driver that is about to end the time to do so."""
    import sys
    import time

    from service.launcher.local_head import LocalRayHead

    settings = _head_settings(tmp_path, monkeypatch)
    head = LocalRayHead(settings.data_path, num_cpus=1)
    head.start()
    marker, done = f"regtune-test-driver-{tmp_path.name}", tmp_path / "finished"
    endless = f"{sys.executable} -c 'import time; time.sleep(300)' {marker}"
    finishing = (f"{sys.executable} -c 'import pathlib, sys, time; time.sleep(2); "
                 f"pathlib.Path(sys.argv[1]).touch()' {done}")
    http = httpx.Client(base_url=head.dashboard_url, timeout=30,
                        headers={"Authorization": f"Bearer {head.token}"})
    try:
        ids = []
        for entrypoint in (endless, finishing):
            response = http.post("/api/jobs/", json={"entrypoint": entrypoint,
                                                     "entrypoint_num_cpus": 0})
            assert response.status_code == 200, response.text
            ids.append(response.json()["submission_id"])
        deadline = time.monotonic() + 60
        while not processes_mentioning(marker) or any(
                http.get(f"/api/jobs/{i}").json()["status"] != "RUNNING" for i in ids):
            assert time.monotonic() < deadline, "the jobs did not start"
            time.sleep(0.2)
        assert not done.exists()
    finally:
        http.close()
        head.stop()
    assert done.exists()  # the finishing driver was let finish
    deadline = time.monotonic() + 15  # the killed one is gone once reaped
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(marker)
