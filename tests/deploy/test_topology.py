"""The compose topology, run natively: a job whose trials all land on the worker node.

Stands in for ``docker compose up`` where no Docker engine runs. The stack (see
conftest.py) is started from the same command lines docker-compose.yml runs
(``topology.py``; test_compose_file.py checks the match). The worker node
advertises two GPUs that do not exist: Ray schedules and assigns them all the
same (``ray.get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``), and the trainer, finding
no CUDA device, trains on the CPU.
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from service.store.schema import ALL_TABLES
from tests.deploy import native
from tests.deploy.conftest import SPEC, Stack
from tests.e2e.conftest import submission_of

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def ray_nodes(stack: Stack) -> dict[str, dict[str, Any]]:
    """The cluster's nodes from Ray's state API (the token is required)."""
    response = httpx.get(f"{stack.ray_url}/api/v0/nodes", headers=stack.ray_headers,
                         timeout=30)
    assert response.status_code == 200, response.text
    nodes = response.json()["data"]["result"]["result"]
    return {n["node_id"]: n for n in nodes if n["state"] == "ALIVE"}


def head_and_worker(stack: Stack) -> tuple[dict[str, Any], dict[str, Any]]:
    nodes = ray_nodes(stack)
    heads = [n for n in nodes.values() if n["is_head_node"]]
    workers = [n for n in nodes.values() if not n["is_head_node"]]
    assert len(heads) == 1 and len(workers) == 1, nodes
    return heads[0], workers[0]


def children(stack: Stack) -> list[Any]:
    assert stack.job is not None
    client = MlflowClient(tracking_uri=stack.mlflow_url)
    ref = stack.job["mlflow"]
    return client.search_runs([ref["experiment_id"]],
                              filter_string=f"tags.`mlflow.parentRunId` = '{ref['parent_run_id']}'")


def test_ray_rejects_requests_without_the_token(stack: Stack) -> None:
    assert httpx.get(f"{stack.ray_url}/api/jobs/", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert httpx.get(f"{stack.ray_url}/api/jobs/", headers=wrong,
                     timeout=10).status_code in (401, 403)
    assert httpx.get(f"{stack.ray_url}/api/jobs/", headers=stack.ray_headers,
                     timeout=10).status_code == 200


def test_head_offers_no_cpu_or_gpu_and_worker_offers_two_of_each(stack: Stack) -> None:
    head, worker = head_and_worker(stack)
    assert head["resources_total"].get("CPU", 0) == 0
    assert head["resources_total"].get("GPU", 0) == 0
    assert worker["resources_total"]["CPU"] == 2
    assert worker["resources_total"]["GPU"] == 2


def test_api_requires_a_token(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.values['api_port']}"
    assert httpx.get(f"{url}/v1/jobs", timeout=10).status_code == 401
    assert stack.api.get("/v1/jobs").status_code == 200
    ready = httpx.get(f"{url}/readyz", timeout=30).json()
    assert ready["status"] == "ready" and all(c["ok"] for c in ready["checks"].values())


def test_job_succeeds_with_every_trial_on_the_worker_node(finished: Stack) -> None:
    job = finished.job
    assert job is not None and job["status"] == "succeeded"
    head, worker = head_and_worker(finished)
    trials = finished.api.get(f"/v1/jobs/{job['id']}/trials").json()
    assert len(trials) == SPEC["search"]["num_trials"]
    assert all(t["status"] == "completed" for t in trials), trials
    runs = children(finished)
    assert len(runs) == len(trials)
    by_trial = {r.data.tags["regtune.trial_id"]: r for r in runs}
    for trial in trials:
        tags = by_trial[trial["trial_id"]].data.tags
        # Where the trial ran, as the trial itself saw it: the worker, never the head.
        assert tags["regtune.node_id"] == worker["node_id"] != head["node_id"]
        # The API reports the same Ray node id and GPU ids as MLflow.
        assert trial["node"] == worker["node_id"]
        assert trial["gpu_ids"] == tags["regtune.gpu_ids"].split(",")


def test_driver_ran_on_the_head(finished: Stack) -> None:
    """entrypoint_num_cpus=0: the driver needs no CPU, so the 0-CPU head can host it."""
    assert finished.job is not None
    head, worker = head_and_worker(finished)
    submission = submission_of(finished.api, finished.job["id"])  # a standby's, at first
    response = httpx.get(f"{finished.ray_url}/api/jobs/{submission}",
                         headers=finished.ray_headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["driver_node_id"] == head["node_id"]


def test_each_trial_got_one_gpu_shared_by_at_most_two_trials(finished: Stack) -> None:
    runs = children(finished)
    gpu_of = {}
    for run in runs:
        ids = run.data.tags["regtune.gpu_ids"].split(",")
        assert len(ids) == 1 and ids[0] in {"0", "1"}, run.data.tags
        # Ray told CUDA the same GPU it told the trial.
        assert run.data.tags["regtune.cuda_visible_devices"] == ids[0]
        gpu_of[run.info.run_id] = ids[0]
    # Simultaneous trials per GPU, from the runs' start and end times: 0.5 GPU each
    # means never more than two at once on one GPU.
    events = sorted([(r.info.start_time, 1, r.info.run_id) for r in runs] +
                    [(r.info.end_time, -1, r.info.run_id) for r in runs])
    running: set[str] = set()
    peak = 0
    for _, kind, run_id in events:
        if kind == 1:
            running.add(run_id)
        else:
            running.discard(run_id)
        per_gpu = [sum(1 for r in running if gpu_of[r] == g) for g in ("0", "1")]
        assert max(per_gpu) <= 2, f"more than two trials on one GPU at once: {per_gpu}"
        peak = max(peak, len(running))
    if peak > 2:  # more trials at once than one GPU can take: both GPUs were used
        assert set(gpu_of.values()) == {"0", "1"}, gpu_of


def test_trials_reach_the_mlflow_server_and_artifacts_land_on_its_store(finished: Stack) -> None:
    job = finished.job
    assert job is not None
    assert job["mlflow"]["tracking_uri"] == finished.mlflow_url
    client = MlflowClient(tracking_uri=finished.mlflow_url)
    parent = client.get_run(job["mlflow"]["parent_run_id"])
    assert parent.info.run_name == f"{SPEC['name']} [{job['id']}]"
    assert parent.info.status == "FINISHED"
    runs = children(finished)
    assert len(runs) == SPEC["search"]["num_trials"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["regtune.job_id"] == job["id"]
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, SPEC["train"]["epochs"] + 1))
    # --serve-artifacts: the driver's upload went through the server to its destination.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "spec.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    on_disk = list(Path(finished.values["artifacts_dir"]).rglob("spec.json"))
    assert len(on_disk) == 1 and parent.info.run_id in str(on_disk[0])


def test_best_answers_from_a_trial_run(finished: Stack) -> None:
    job = finished.job
    assert job is not None
    response = finished.api.get(f"/v1/jobs/{job['id']}/best")
    assert response.status_code == 200, response.text
    best = response.json()
    assert best["mlflow_run_id"] in {r.info.run_id for r in children(finished)}
    assert 0.0 < best["metric"] <= 1.0


def test_job_store_and_mlflow_live_in_separate_databases(finished: Stack) -> None:
    regtune_tables = native.tables(finished.dsn(finished.values["regtune_db"]))
    mlflow_tables = native.tables(finished.dsn(finished.values["mlflow_db"]))
    ours = {t.name for t in ALL_TABLES}
    assert ours <= regtune_tables
    assert {"experiments", "runs", "metrics"} <= mlflow_tables
    assert not ours & mlflow_tables
    assert not {"experiments", "runs"} & regtune_tables


def test_tune_results_are_under_the_shared_storage_path(finished: Stack) -> None:
    assert finished.job is not None
    # Tune's experiment directory is named after the job (the driver may add a suffix).
    experiments = list(Path(finished.values["storage_path"]).glob(f"{finished.job['id']}*"))
    assert len(experiments) == 1, experiments
    # Tune's snapshot of the experiment (what Tuner.restore reads) and a directory per
    # trial live there; Tune's own result files are off (the job store and MLflow
    # record every result).
    (state,) = experiments[0].glob("experiment_state-*.json")
    assert len(json.loads(state.read_text())["trial_data"]) == SPEC["search"]["num_trials"]
    trial_dirs = [p for p in experiments[0].iterdir() if p.is_dir()]
    assert len(trial_dirs) == SPEC["search"]["num_trials"]
