"""Standby drivers: started ahead of jobs, handed the next job by the supervisor.

The pool over a fake launcher, then the job service over a real SQLite store with it
(no Ray): the job gets the standby's Ray job, whose id the store then answers to.
"""

from __future__ import annotations

import json

import httpx
import pytest

from service.launcher.base import (LaunchError, LaunchStatus, is_standby, standby_submission_id,
                                   submission_id)
from service.launcher.standby import StandbyDrivers
from service.settings import Settings
from tests.service.api.conftest import SMALL, FakeLauncher, make_settings
from tests.service.test_launcher import recording_launcher


class StandbyLauncher(FakeLauncher):
    """A fake launcher that also starts standbys; ``states`` overrides what Ray says."""

    def __init__(self) -> None:
        super().__init__()
        self.standbys: list[str] = []
        self.states: dict[str, str] = {}
        self.refuse: LaunchError | None = None

    def submit_standby(self, submission: str) -> None:
        if self.refuse is not None:
            raise self.refuse
        assert is_standby(submission)
        self.standbys.append(submission)

    def status(self, submission: str) -> LaunchStatus:
        if submission in self.states:
            return LaunchStatus(self.states[submission])
        return super().status(submission)


def test_the_pool_keeps_its_size_and_hands_out_live_standbys_only() -> None:
    launcher = StandbyLauncher()
    pool = StandbyDrivers(launcher, size=2, max_age_s=600)
    pool.fill()
    pool.fill()  # already full
    assert len(launcher.standbys) == 2
    first, second = launcher.standbys
    launcher.states[first] = "FAILED"  # died while waiting: never handed out
    assert pool.take() == second
    assert pool.take() is None
    pool.fill()
    assert len(launcher.standbys) == 4
    pool.give_back(second)  # its job was cancelled before the hand-over
    assert pool.take() == second
    pool.close()
    assert set(launcher.stopped) == set(launcher.standbys[2:])


def test_an_old_standby_is_stopped_not_handed_out(monkeypatch) -> None:
    import service.launcher.standby as standby

    clock = [1000.0]
    monkeypatch.setattr(standby.time, "monotonic", lambda: clock[0])
    launcher = StandbyLauncher()
    pool = StandbyDrivers(launcher, size=1, max_age_s=60)
    pool.fill()
    clock[0] += 61  # its driver is about to give up waiting
    assert pool.take() is None
    assert launcher.stopped == launcher.standbys[:1]


def test_a_refused_start_is_tried_again_and_a_launcher_without_standbys_is_left_alone(
) -> None:
    launcher = StandbyLauncher()
    launcher.refuse = LaunchError("No available agent to submit job", transient=True)
    pool = StandbyDrivers(launcher, size=1, max_age_s=600)
    pool.fill()
    assert pool.take() is None and launcher.standbys == []
    launcher.refuse = None
    pool.fill()
    assert pool.take() == launcher.standbys[0]

    plain = FakeLauncher()  # Launcher.submit_standby: refuses, once
    calls = []
    plain.submit_standby = lambda sid: calls.append(sid) or FakeLauncher.submit_standby(plain, sid)
    off = StandbyDrivers(plain, size=1, max_age_s=600)
    with pytest.raises(LaunchError):
        FakeLauncher.submit_standby(plain, standby_submission_id())
    off.fill()
    off.fill()
    assert off.take() is None and len(calls) == 1  # refused once, then not asked again


@pytest.fixture
def service(tmp_path, request):
    from service.app import create_app
    from fastapi.testclient import TestClient

    launcher = StandbyLauncher()
    overrides = getattr(request, "param", {})
    app = create_app(make_settings(tmp_path, **overrides), launcher=launcher, supervise=False)
    with TestClient(app) as client:
        yield client, launcher


def events(client, job_id: str) -> list[dict]:
    text = client.get(f"/v1/jobs/{job_id}/events", params={"follow": "false"}).text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def submit(client) -> str:
    response = client.post("/v1/jobs", json=SMALL)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def start_one(client) -> tuple[str, str | None]:
    """A tick (the service's first: its standby, if any, starts), a job submitted, a tick
    (the job starts): (the job's id, the Ray job it runs in)."""
    jobs = client.app.state.ctx.jobs
    jobs.tick()
    job_id = submit(client)
    jobs.tick()
    return job_id, client.app.state.ctx.store.get_job(job_id).ray_submission_id


def test_the_next_job_is_handed_to_the_waiting_standby(service) -> None:
    client, launcher = service
    jobs = client.app.state.ctx.jobs
    jobs.tick()  # the first tick starts the standby
    assert len(launcher.standbys) == 1
    waiting = launcher.standbys[0]
    job_id = submit(client)
    jobs.tick()
    assert launcher.submitted == []  # no driver of its own
    store = client.app.state.ctx.store
    assert store.get_job(job_id).ray_submission_id == waiting
    assert store.running_job_of(waiting).id == job_id  # what the standby polls for
    launched = [e for e in events(client, job_id) if e["kind"] == "job_launched"]
    assert launched[0]["payload"] == {"submission_id": waiting, "standby": True}
    # On its own local head, no standby starts while a job runs (they share the cores).
    jobs.tick()
    assert len(launcher.standbys) == 1
    # Cancel stops the standby's Ray job, which now runs this job.
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert waiting in launcher.stopped
    jobs.tick()  # nothing runs: the next one starts
    assert len(launcher.standbys) == 2


@pytest.mark.parametrize("service", [{"ray_address": "http://ray-head:8265"}], indirect=True)
def test_on_a_cluster_the_next_standby_starts_at_once(service) -> None:
    """Drivers run on the head, trials on workers: a standby's start takes nothing from
    a running job's trials."""
    client, launcher = service
    job_id, sid = start_one(client)
    assert sid == launcher.standbys[0]
    assert len(launcher.standbys) == 2


def test_a_standby_that_dies_running_a_job_is_followed_by_the_jobs_own_driver(service) -> None:
    client, launcher = service
    job_id, standby_sid = start_one(client)
    assert is_standby(standby_sid)
    launcher.stopped.append(standby_sid)  # Ray says STOPPED; the driver never reported
    client.app.state.ctx.jobs.tick()
    assert launcher.submitted == [job_id]
    assert client.app.state.ctx.store.get_job(job_id).ray_submission_id == \
        submission_id(job_id, 1)


@pytest.mark.parametrize("service", [{"standby_drivers": 0}], indirect=True)
def test_with_no_standby_drivers_every_job_starts_its_own(service) -> None:
    client, launcher = service
    job_id, sid = start_one(client)
    assert launcher.standbys == [] and launcher.submitted == [job_id]
    assert sid == f"regtune-{job_id}"


def test_stopping_the_service_stops_the_waiting_standby(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    launcher = StandbyLauncher()
    app = create_app(make_settings(tmp_path), launcher=launcher, supervise=False)
    with TestClient(app) as client:
        client.app.state.ctx.jobs.tick()
    assert launcher.standbys and launcher.stopped == launcher.standbys


def test_the_standby_is_started_by_ray_with_the_fixed_entrypoint_and_settings(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    seen: list[httpx.Request] = []
    launcher = recording_launcher(settings, seen)
    sid = standby_submission_id()
    launcher.submit_standby(sid)
    body = json.loads(seen[0].content)
    assert body["entrypoint"] == f"/opt/venv/bin/python -m workers.tune.driver --standby {sid}"
    assert body["submission_id"] == sid and body["metadata"] == {"regtune_standby": "1"}
    assert body["runtime_env"] == {"env_vars": settings.driver_env()}
    assert body["runtime_env"]["env_vars"]["REGTUNE_STANDBY_IDLE_S"] == "900.0"
    for hostile in ("regtune-standby-0123; id", "regtune-0123456789ab", "../x"):
        with pytest.raises(ValueError):
            launcher.submit_standby(hostile)
    assert len(seen) == 1
