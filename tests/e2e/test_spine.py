"""Issue 2's done-when: the real service, real Ray, real MLflow, checked against MLflow."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e

SPEC_YAML = """
name: e2e-spine
task: digits
objective: {loss: focal, metric: val_accuracy, mode: max}
train: {epochs: 3, batch_size: 128, lr: 0.1}
space:
  focal_gamma:    {low: 0.0, high: 3.0}
  reg_lambda:     {low: 1.0e-5, high: 1.0e-2, log: true}
  l1_ratio:       0.0
  reg_start_step: {low: 0, high: 20, type: int}
search: {algorithm: tpe, num_trials: 4, max_concurrent: 2, scheduler: asha, seed: 0}
resources: {cpu: 1, gpu: 0}
"""


@pytest.fixture(scope="module")
def finished(live):
    response = live.submit(SPEC_YAML)
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running")
    return live.wait(job["id"])


def test_job_succeeds_with_every_trial_recorded(live, finished) -> None:
    assert finished["status"] == "succeeded", finished.get("error")
    trials = live.http.get(f"/v1/jobs/{finished['id']}/trials").json()
    assert len(trials) == 4
    assert all(t["status"] in ("completed", "stopped") for t in trials)
    assert finished["trials"]["total"] == 4
    assert finished["mlflow"]["experiment_id"] and finished["mlflow"]["parent_run_id"]


def test_mlflow_has_one_child_run_per_trial_with_params_and_metrics(live, finished) -> None:
    client = MlflowClient(tracking_uri=live.mlflow_uri)
    parent_id = finished["mlflow"]["parent_run_id"]
    children = client.search_runs([finished["mlflow"]["experiment_id"]],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    trials = {t["trial_id"]: t for t in live.http.get(f"/v1/jobs/{finished['id']}/trials").json()}
    assert len(children) == len(trials) == 4
    for run in children:
        trial = trials[run.data.tags["regtune.trial_id"]]
        assert run.data.tags["regtune.job_id"] == finished["id"]
        assert run.info.status == "FINISHED"
        assert run.info.run_id == trial["mlflow_run_id"]
        for name, value in trial["config"].items():
            assert run.data.params[name] == str(value)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, trial["iteration"] + 1))
        assert history[-1].value == pytest.approx(trial["objective"])
        assert {"train_loss", "val_loss", "val_accuracy"} <= set(run.data.metrics)
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_best_is_the_best_last_value_in_mlflow(live, finished) -> None:
    client = MlflowClient(tracking_uri=live.mlflow_uri)
    children = client.search_runs([finished["mlflow"]["experiment_id"]],
                                  filter_string="tags.`mlflow.parentRunId` = "
                                                f"'{finished['mlflow']['parent_run_id']}'")
    last = {r.info.run_id: client.get_metric_history(r.info.run_id, "val_accuracy")[-1].value
            for r in children}
    best = live.http.get(f"/v1/jobs/{finished['id']}/best").json()
    assert best["metric"] == pytest.approx(max(last.values()))
    assert last[best["mlflow_run_id"]] == pytest.approx(best["metric"])
    assert set(best["config"]) >= {"reg_lambda", "focal_gamma", "reg_start_step", "l1_ratio"}
    assert best["metrics"]["val_accuracy"] == pytest.approx(best["metric"])


def test_event_stream_delivers_each_trials_results_in_order(live, finished) -> None:
    with live.http.stream("GET", f"/v1/jobs/{finished['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines()
                  if line.startswith("data: ")]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    per_trial: dict[str, list[int]] = {}
    for event in events:
        if event["kind"] == "trial_result":
            per_trial.setdefault(event["payload"]["trial_id"], []).append(
                event["payload"]["iteration"])
    assert len(per_trial) == 4
    for iterations in per_trial.values():
        assert iterations == list(range(1, len(iterations) + 1))
    assert events[-1]["kind"] == "job_succeeded"


def test_bad_spec_is_refused_and_nothing_is_stored(live) -> None:
    before = live.http.get("/v1/jobs").json()
    response = live.submit({"name": "bad", "task": "digits",
                            "space": {"reg_lambda": {"low": 1.0, "high": 0.1}}})
    assert response.status_code == 422
    fields = [f["field"] for f in response.json()["error"]["fields"]]
    assert "space.reg_lambda.low" in fields
    assert live.http.get("/v1/jobs").json() == before


def test_driver_log_is_served(live, finished) -> None:
    text = live.http.get(f"/v1/jobs/{finished['id']}/logs").text
    assert "workers.tune.driver" in text
