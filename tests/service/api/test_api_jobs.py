"""Handlers over a real store: status codes, error shape, idempotency, fairness, limits."""

from __future__ import annotations

import json

import yaml

from service.jobs import JobService
from tests.service.api.conftest import SMALL


def test_submit_returns_201_location_and_queued_job(client, launcher) -> None:
    response = client.post("/v1/jobs", json=SMALL)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["owner"] == "local"
    assert job["trials"]["total"] == 3 and job["queue_position"] == 1
    assert launcher.submitted == []  # the supervisor launches, not the handler


def test_yaml_body_with_yaml_content_type(client) -> None:
    response = client.post("/v1/jobs", content=yaml.safe_dump(SMALL),
                           headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["space"]["reg_lambda"]["log"] is True


def test_invalid_spec_is_422_naming_the_field_and_stores_nothing(client, launcher) -> None:
    bad = {**SMALL, "space": {"focal_gamma": -1}}
    response = client.post("/v1/jobs", json=bad)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["status"] == 422 and "space.focal_gamma" in error["message"]
    assert [f["field"] for f in error["fields"]] == ["space.focal_gamma"]
    assert client.get("/v1/jobs").json() == [] and launcher.submitted == []


def test_body_too_large_is_413(client) -> None:
    big = json.dumps({**SMALL, "name": "x"}) + " " * 70_000
    response = client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["fields"][0]["field"] == "body"


def test_too_many_trials_for_this_service_is_422(client_for) -> None:
    client = client_for(max_trials_per_job=2)
    response = client.post("/v1/jobs", json=SMALL)
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "search.num_trials"


def test_idempotency_key_returns_the_same_job(client) -> None:
    first = client.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "abc"})
    second = client.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "abc"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert len(client.get("/v1/jobs").json()) == 1


def test_unknown_and_malformed_job_ids(client) -> None:
    assert client.get("/v1/jobs/0123456789ab").status_code == 404
    malformed = client.get("/v1/jobs/../etc")
    assert malformed.status_code in (404, 422)
    response = client.get("/v1/jobs/NOT-AN-ID")
    assert response.status_code == 422
    assert response.json()["error"]["fields"][0]["field"] == "path.job_id"


def test_best_is_404_until_a_trial_reports_then_best_with_earliest_tie(client) -> None:
    job = client.post("/v1/jobs", json=SMALL).json()
    assert client.get(f"/v1/jobs/{job['id']}/best").status_code == 404
    store = client.app.state.ctx.store
    for trial_id, value in (("t1", 0.5), ("t2", 0.9), ("t3", 0.9)):
        store.upsert_trial(job["id"], trial_id, status="completed", config={"reg_lambda": 1},
                           metrics={"val_accuracy": value}, objective=value, iteration=2)
    best = client.get(f"/v1/jobs/{job['id']}/best").json()
    assert best["trial_id"] == "t2" and best["metric"] == 0.9


def test_three_users_get_slots_round_robin(client_for, launcher) -> None:
    client = client_for(max_running_jobs=3, max_running_jobs_per_user=2)
    ctx = client.app.state.ctx
    jobs: JobService = ctx.jobs
    from service.auth import Principal
    from search_spaces import validate_spec

    spec = validate_spec(SMALL)
    order = []
    for user in ("ann", "ann", "ann", "ben", "ben", "cat"):
        job, _ = jobs.submit(spec, Principal(name=user, admin=False))
        order.append((user, job.id))
    jobs.tick()
    owners = [ctx.store.get_job(j).owner for j in launcher.submitted]
    assert owners == ["ann", "ben", "cat"]  # one per user before anyone gets a second
    listed = {j["id"]: j for j in client.get("/v1/jobs").json()}
    queued = sorted((j["queue_position"], j["owner"]) for j in listed.values()
                    if j["status"] == "queued")
    assert [p for p, _ in queued] == [1, 2, 3]
    assert queued[0][1] in ("ann", "ben")


def test_cancel_queued_job_never_launches_and_is_idempotent(client, launcher) -> None:
    job = client.post("/v1/jobs", json=SMALL).json()
    first = client.post(f"/v1/jobs/{job['id']}/cancel")
    second = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert first.json()["status"] == second.json()["status"] == "cancelled"
    client.app.state.ctx.jobs.tick()
    assert launcher.submitted == []


def test_cancel_running_job_stops_its_driver(client, launcher) -> None:
    job = client.post("/v1/jobs", json=SMALL).json()
    client.app.state.ctx.jobs.tick()
    assert launcher.submitted == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert launcher.stopped == [f"regtune-{job['id']}"]


def test_driver_that_dies_silently_is_restarted_then_failed(client_for, launcher) -> None:
    client = client_for(max_driver_restarts=1)
    job = client.post("/v1/jobs", json=SMALL).json()
    jobs = client.app.state.ctx.jobs
    jobs.tick()
    launcher.stopped.append(f"regtune-{job['id']}")  # Ray says STOPPED, nobody reported
    jobs.tick()  # started again: the new driver restores the Tune experiment
    assert launcher.submitted == [job["id"], job["id"]]
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["status"] == "running"
    assert client.app.state.ctx.store.get_job(job["id"]).ray_submission_id == \
        f"regtune-{job['id']}-1"
    launcher.stopped.append(f"regtune-{job['id']}-1")  # dies again: out of restarts
    jobs.tick()
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["status"] == "failed" and "without reporting" in body["error"]


def test_auth_required_refuses_missing_token_and_names_the_header(client_for) -> None:
    client = client_for(auth="required")
    response = client.get("/v1/jobs")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["fields"][0]["field"] == "header.authorization"


def test_metrics_and_readiness(client, launcher) -> None:
    client.post("/v1/jobs", json=SMALL)
    text = client.get("/metrics").text
    assert 'regtune_jobs{status="queued"} 1.0' in text
    assert "regtune_queue_length 1.0" in text
    assert 'regtune_request_seconds_count{method="POST",route="/v1/jobs",status="201"}' in text
    assert client.get("/readyz").status_code == 200
    launcher.healthy = False
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["ray"]["ok"] is False


def test_event_stream_follows_a_running_job_in_order_and_ends_with_it(client) -> None:
    import threading
    import time

    job = client.post("/v1/jobs", json=SMALL).json()
    store = client.app.state.ctx.store

    def produce() -> None:
        time.sleep(0.3)
        for iteration in (1, 2, 3):
            store.add_event(job["id"], "trial_result", {"trial_id": "a", "iteration": iteration})
            time.sleep(0.1)
        assert store.transition(job["id"], from_statuses={"queued"}, to="cancelled")
        store.add_event(job["id"], "job_cancelled", {})

    writer = threading.Thread(target=produce)
    writer.start()
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        data = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    writer.join()
    kinds = [d["kind"] for d in data]
    assert kinds == ["job_queued", "trial_result", "trial_result", "trial_result", "job_cancelled"]
    assert [d["payload"]["iteration"] for d in data if d["kind"] == "trial_result"] == [1, 2, 3]
    resumed = client.get(f"/v1/jobs/{job['id']}/events",
                         headers={"Last-Event-ID": str(data[2]["seq"])}).text
    assert resumed.count("event: trial_result") == 1 and "event: job_cancelled" in resumed


def test_extend_rules(client, launcher) -> None:
    job = client.post("/v1/jobs", json=SMALL).json()
    store = client.app.state.ctx.store
    early = client.post(f"/v1/jobs/{job['id']}/extend", json={"num_trials": 2})
    assert early.status_code == 409  # still queued
    assert store.transition(job["id"], from_statuses={"queued"}, to="succeeded")
    bad = client.post(f"/v1/jobs/{job['id']}/extend", json={"num_trials": 0})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "num_trials"
    extended = client.post(f"/v1/jobs/{job['id']}/extend", json={"num_trials": 2})
    assert extended.status_code == 200
    body = extended.json()
    assert body["status"] == "queued" and body["trials"]["total"] == 5
    assert body["spec"]["search"]["num_trials"] == 5
    grid = client.post("/v1/jobs", json={**SMALL, "search": {"algorithm": "grid"},
                                         "space": {"l1_ratio": {"choices": [0, 1]}}}).json()
    assert store.transition(grid["id"], from_statuses={"queued"}, to="succeeded")
    refused = client.post(f"/v1/jobs/{grid['id']}/extend", json={"num_trials": 1})
    assert refused.status_code == 422 and "cannot be extended" in refused.text


def test_warm_start_must_name_a_succeeded_job(client) -> None:
    missing = client.post("/v1/jobs", json={**SMALL, "search": {
        "warm_start": {"job": "0123456789ab"}}})
    assert missing.status_code == 422
    assert missing.json()["error"]["fields"][0]["field"] == "search.warm_start.job"
    assert client.get("/v1/jobs").json() == []


def test_transient_launch_refusal_keeps_the_job_queued_then_launches(client, launcher) -> None:
    from service.launcher import LaunchError

    job = client.post("/v1/jobs", json=SMALL).json()
    refusals = [LaunchError("500 No available agent to submit job", transient=True)]
    real_submit = launcher.submit

    def flaky(job_id: str, attempt: int = 0) -> str:
        if refusals:
            raise refusals.pop()
        return real_submit(job_id, attempt)

    launcher.submit = flaky
    jobs = client.app.state.ctx.jobs
    jobs.tick()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    jobs.tick()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    assert launcher.submitted == [job["id"]]


def test_permanent_launch_refusal_fails_the_job(client, launcher) -> None:
    from service.launcher import LaunchError

    job = client.post("/v1/jobs", json=SMALL).json()

    def refuse(job_id: str, attempt: int = 0) -> str:
        raise LaunchError("400 bad entrypoint", transient=False)

    launcher.submit = refuse
    client.app.state.ctx.jobs.tick()
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["status"] == "failed" and "could not launch" in body["error"]


def test_a_revoked_token_is_refused_on_the_next_request(client_for) -> None:
    client = client_for(auth="required")
    store = client.app.state.ctx.store
    _, token = store.create_user("dora")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    job = client.post("/v1/jobs", json=SMALL, headers=headers)
    assert job.status_code == 201 and job.json()["owner"] == "dora"
    assert job.json()["queue_position"] == 1
    # Revoked by another store object, as `regtune users revoke` does from its own process.
    from service.store import open_store

    other = open_store(store.url)
    assert other.revoke_user("dora")
    other.close()
    refused = client.get(f"/v1/jobs/{job.json()['id']}", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["fields"][0]["field"] == "header.authorization"


def test_concurrent_submits_take_turns_before_the_sqlite_store(client) -> None:
    """Eight submits at once all land, each with its own job, and on SQLite (one writer)
    they reach the store one at a time: they queue on the event loop, not as threads
    parked on the store's lock."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    jobs = client.app.state.ctx.jobs
    assert client.app.state.ctx.submits is not None  # the SQLite store writes serially
    inside, most, guard = [0], [0], threading.Lock()
    original = jobs.submit

    def counting_submit(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.02)  # long enough for the others to arrive meanwhile
            return original(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    jobs.submit = counting_submit
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: client.post("/v1/jobs", json={**SMALL,
                                                                          "name": f"c{i}"}),
                                  range(8)))
    assert [r.status_code for r in responses] == [201] * 8
    assert len({r.json()["id"] for r in responses}) == 8
    assert most[0] == 1
