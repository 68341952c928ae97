"""Issue 5 on the real service: tokens, ownership, cancel that really stops Ray and MLflow."""

from __future__ import annotations

import time

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import regtune_cli

pytestmark = pytest.mark.e2e

LONG = {"name": "e2e-long", "task": "digits", "objective": {"metric": "val_accuracy"},
        "train": {"epochs": 40, "batch_size": 16},
        "space": {"reg_lambda": {"low": 1e-5, "high": 1e-2, "log": True}},
        "search": {"algorithm": "random", "num_trials": 6, "max_concurrent": 2,
                   "scheduler": "none", "seed": 1}}


def test_no_token_and_bad_token_get_401(live) -> None:
    anonymous = live.as_user(None)
    response = anonymous.get("/v1/jobs")
    assert response.status_code == 401
    assert response.json()["error"]["fields"][0]["field"] == "header.authorization"
    bad = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401
    assert anonymous.get("/healthz").status_code == 200  # liveness needs no token


def test_revoked_token_gets_401(live) -> None:
    carol = live.as_user("carol")
    assert carol.get("/v1/jobs").status_code == 200
    env = {"REGTUNE_DATA_DIR": str(live.data_dir), "PATH": "/usr/bin:/bin"}
    regtune_cli("users", "revoke", "carol", env=env)
    assert carol.get("/v1/jobs").status_code == 401


def _running_trial(client: httpx.Client, job_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["trials"]["running"] >= 1:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.5)
    raise AssertionError("no trial started")


def _alive_trial_actors(live) -> list[dict]:
    url, headers = live.ray_dashboard()
    data = httpx.get(f"{url}/api/v0/actors", params={"limit": 10000, "detail": 1},
                     headers=headers, timeout=30).json()
    actors = data["data"]["result"]["result"]
    return [a for a in actors if a.get("state") == "ALIVE"
            and "ImplicitFunc" in str(a.get("class_name", ""))]


def test_ownership_and_cancel_stop_ray_and_mlflow(live) -> None:
    alice, bob, root = live.as_user("alice"), live.as_user("bob"), live.as_user("root")
    job_a = alice.post("/v1/jobs", json={**LONG, "name": "alice-long"}).json()
    job_b = bob.post("/v1/jobs", json={**LONG, "name": "bob-long"}).json()
    assert (job_a["owner"], job_b["owner"]) == ("alice", "bob")

    # Everyone on the team reads every job.
    for client in (alice, bob):
        ids = {j["id"] for j in client.get("/v1/jobs").json()}
        assert {job_a["id"], job_b["id"]} <= ids
    # Neither can cancel the other's.
    assert bob.post(f"/v1/jobs/{job_a['id']}/cancel").status_code == 403
    assert alice.post(f"/v1/jobs/{job_b['id']}/cancel").status_code == 403
    # An admin can.
    cancelled_b = root.post(f"/v1/jobs/{job_b['id']}/cancel")
    assert cancelled_b.status_code == 200 and cancelled_b.json()["status"] == "cancelled"

    # The owner cancels mid-run.
    _running_trial(alice, job_a["id"])
    assert _alive_trial_actors(live), "trial actors are visible to the check before cancel"
    first = alice.post(f"/v1/jobs/{job_a['id']}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    again = alice.post(f"/v1/jobs/{job_a['id']}/cancel")  # harmless the second time
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    # Nothing left running: in Ray, in the store, in MLflow.
    url, headers = live.ray_dashboard()
    ray_job = httpx.get(f"{url}/api/jobs/{live.submission(job_a['id'])}",
                        headers=headers).json()
    assert ray_job["status"] == "STOPPED"
    deadline = time.monotonic() + 30
    while _alive_trial_actors(live) and time.monotonic() < deadline:
        time.sleep(1)
    assert _alive_trial_actors(live) == []
    trials = alice.get(f"/v1/jobs/{job_a['id']}/trials").json()
    assert trials and not [t for t in trials if t["status"] in ("running", "pending")]
    job = alice.get(f"/v1/jobs/{job_a['id']}").json()
    client = MlflowClient(tracking_uri=live.mlflow_uri)
    runs = client.search_runs([job["mlflow"]["experiment_id"]],
                              filter_string=f"tags.`regtune.job_id` = '{job_a['id']}'")
    assert runs, "the cancelled job's runs are in MLflow"
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    assert "KILLED" in {r.info.status for r in runs}
