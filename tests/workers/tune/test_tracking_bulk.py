"""The parent run and the lookups through the bulk path: the same runs MLflow's client
finds and makes, and a driver-side path that never imports MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny
from workers.tune.mlflow_bulk import BulkStore
from workers.tune.mlflow_rows import Refused, Validator, artifact_uri
from workers.tune.mlflow_runs import job_runs

REPO = Path(__file__).resolve().parents[3]
BEST = {"metric": 0.9, "config": {"reg_lambda": 0.001, "l1_ratio": 0.5}, "trial_id": "t1",
        "mlflow_run_id": "r1"}


@pytest.fixture
def uri(mlflow_db: str) -> str:
    return mlflow_db


def parent_seen(client: Any, run_id: str, job_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    info = {k: v for k, v in vars(run.info).items()
            if k not in ("_run_id", "_run_uuid", "_start_time", "_end_time", "_artifact_uri")}
    return json.loads(json.dumps({"info": info, "params": run.data.params,
                                  "tags": run.data.tags, "metrics": run.data.metrics})
                      .replace(job_id, "<job>"))


def test_a_parent_run_in_bulk_is_the_one_mlflows_client_makes(uri: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from workers.tune.tracking import ParentRun

    spec, root = validate_spec(tiny("parent-bulk")), (tmp_path / "artifacts").as_uri()
    client = MlflowClient(tracking_uri=uri)
    by_client = ParentRun(uri, root, "aaaaaaaaaaaa", spec, "ann")
    bulk = BulkStore.for_uri(uri)
    by_bulk = ParentRun(uri, root, "bbbbbbbbbbbb", spec, "ann", bulk=bulk)
    assert by_bulk.experiment_id == by_client.experiment_id  # found in SQL, by name
    assert not by_bulk.spec_logged and by_client.spec_logged
    for parent in (by_client, by_bulk):
        parent.finish(BEST, "FINISHED")
    by_bulk.log_spec()
    want = parent_seen(client, by_client.run_id, "aaaaaaaaaaaa")
    got = parent_seen(client, by_bulk.run_id, "bbbbbbbbbbbb")
    assert got == want
    assert got["info"]["_status"] == "FINISHED" and got["info"]["_user_id"] == "ann"
    assert got["params"]["best.reg_lambda"] == "0.001" and got["metrics"] == {
        "best_val_accuracy": 0.9}
    assert [a.path for a in client.list_artifacts(by_bulk.run_id)] == ["spec.json"]
    # A driver restarted for the same job finds its parent run again, in SQL.
    again = ParentRun(uri, root, "bbbbbbbbbbbb", spec, "ann", bulk=bulk)
    assert again.run_id == by_bulk.run_id and again.spec_logged
    # Finishing again with the same answer is accepted; another answer goes to MLflow,
    # which refuses to change a param (the bulk path refused it and wrote nothing).
    again.finish(BEST, "FINISHED")
    with pytest.raises(Exception, match="Changing param values is not allowed"):
        again.finish({**BEST, "config": {"reg_lambda": 0.5}}, "FINISHED")
    assert client.get_run(by_bulk.run_id).data.params["best.reg_lambda"] == "0.001"
    bulk.close()


def test_runs_tagged_finds_what_search_runs_finds(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment, other = (client.create_experiment(f"tagged-{i}-{time.time_ns()}")
                         for i in range(2))
    made = {}
    for trial in ("t0", "t1", "t1", "t2"):  # t1 twice: the newer run is kept
        made.setdefault(trial, []).append(client.create_run(
            experiment, tags={"regtune.job_id": "job", "regtune.trial_id": trial}).info.run_id)
        time.sleep(0.002)
    client.delete_run(made["t2"][0])  # deleted: not found
    client.create_run(experiment, tags={"regtune.job_id": "job"})  # the parent: no trial
    client.create_run(experiment, tags={"regtune.job_id": "other", "regtune.trial_id": "t9"})
    client.create_run(other, tags={"regtune.job_id": "job", "regtune.trial_id": "t8"})
    bulk = BulkStore.for_uri(uri)
    tagged = bulk.runs_tagged(experiment, {"regtune.job_id": "job"}, "regtune.trial_id")
    bulk.close()
    by_sql: dict[str, str] = {}
    for run_id, trial in tagged:
        if trial:
            by_sql.setdefault(trial, run_id)
    by_client = {t: r.info.run_id for t, r in job_runs(client.search_runs, experiment,
                                                        "job").items()}
    assert by_sql == by_client == {"t0": made["t0"][0], "t1": made["t1"][1]}
    assert len(tagged) == 4  # t0, both t1, the parent (no trial tag)


def test_a_changed_param_is_refused_and_nothing_is_written(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(f"params-{time.time_ns()}")
    bulk = BulkStore.for_uri(uri)
    run = bulk.create_run(experiment, "t0", {}, {"lr": "0.1"})
    bulk.write_run(run, [("loss", 1.0, 1, 1)], None, None, {"lr": "0.1", "seed": "1"})
    with pytest.raises(Refused, match="another value"):
        bulk.write_run(run, [("loss", 2.0, 2, 2)], {"t": "x"}, ("FINISHED", 5), {"lr": "0.2"})
    bulk.close()
    kept = client.get_run(run)
    assert kept.data.params == {"lr": "0.1", "seed": "1"} and kept.info.status == "RUNNING"
    assert kept.data.metrics == {"loss": 1.0} and "t" not in kept.data.tags


@pytest.mark.parametrize("location", [
    "/tmp/mlruns/0", "/tmp/mlruns/0/", "file:///tmp/x", "file:///tmp/x/", "file:/tmp/x",
    "file://host/tmp/x", "/tmp/a b/c", "file:///tmp/a%20b", "s3://bucket/p?v=1",
    "/tmp/x;y", "relative/path"])
def test_artifact_uris_are_mlflows(location: str) -> None:
    from mlflow.utils.uri import append_to_uri_path

    assert artifact_uri(location, "abc123") == append_to_uri_path(location, "abc123",
                                                                  "artifacts")


def test_plain_keys_are_checked_without_mlflow_and_others_by_it() -> None:
    code = """
import sys
from workers.tune.mlflow_rows import Refused, Validator
v = Validator()
for kind, key in [("param", "penalty.lambda"), ("tag", "regtune.job_id"),
                  ("metric", "val_accuracy"), ("tag", "mlflow.parentRunId")]:
    v.check(kind, key, "1")
plain = "mlflow" in sys.modules
v.check("tag", "odd key/with:colon", "x")  # valid, but not plain: MLflow decides
refused = []
for kind, key in [("param", "../x"), ("metric", "bad key!"), ("tag", "a" * 251)]:
    try:
        v.check(kind, key, "1")
    except Refused:
        refused.append(key[:4])
print(json.dumps([plain, "mlflow" in sys.modules, refused]))
"""
    out = subprocess.run([sys.executable, "-c", "import json" + code], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [False, True, ["../x", "bad ", "aaaa"]]
    with pytest.raises(Refused, match="at most 6000"):
        Validator().check("param", "lr", "x" * 6001)


def test_the_driver_side_never_imports_mlflow_on_the_bulk_path(uri: str,
                                                               tmp_path: Path) -> None:
    """The parent run found, child runs made, filled and ended, the parent finished:
    all before a job's answer, and none of it imports MLflow (about 2 s of CPU)."""
    from mlflow.tracking import MlflowClient

    root = (tmp_path / "artifacts").as_uri()
    code = f"""
import json, sys
from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny
from workers.tune.mlflow_bulk import BulkStore
from workers.tune.mlflow_writer import MlflowWriter
from workers.tune.tracking import ParentRun

uri, spec = {uri!r}, validate_spec(tiny("no-import"))
def client():
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri)
parent = ParentRun(uri, {root!r}, "cccccccccccc", spec, "ann", bulk=BulkStore.for_uri(uri))
w = MlflowWriter(client, parent.experiment_id, parent.run_id, "cccccccccccc", {{}},
                 bulk_factory=lambda: BulkStore.for_uri(uri))
for epoch in (1, 2):
    w.log("t1", {{"val_accuracy": 0.4 * epoch}}, 1000 + epoch, epoch,
          open_params={{"lr": 0.2}} if epoch == 1 else None)
w.terminate("t1", "FINISHED")
assert w.close()
parent.finish({{"metric": 0.8, "config": {{"lr": 0.2}}, "trial_id": "t1",
               "mlflow_run_id": w.run_ids["t1"]}}, "FINISHED")
print(json.dumps({{"mlflow": "mlflow" in sys.modules, "parent": parent.run_id,
                  "child": w.run_ids["t1"], "dropped": w.stats["dropped"]}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mlflow"] is False and out["dropped"] == 0
    client = MlflowClient(tracking_uri=uri)
    parent, child = client.get_run(out["parent"]), client.get_run(out["child"])
    assert parent.info.status == child.info.status == "FINISHED"
    assert parent.data.metrics == {"best_val_accuracy": 0.8}
    assert child.data.tags["mlflow.parentRunId"] == out["parent"]
    assert child.data.params == {"lr": "0.2"} and child.data.metrics == {"val_accuracy": 0.8}
    experiment = client.get_experiment(parent.info.experiment_id)  # made in SQL too
    assert experiment.name == "regtune/no-import"
    assert experiment.artifact_location == f"{root}/no-import"
    assert experiment.tags == {"mlflow.experimentKind": "custom_model_development"}


def test_an_experiment_in_bulk_is_the_one_mlflows_client_makes(uri: str,
                                                               tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client, bulk = MlflowClient(tracking_uri=uri), BulkStore.for_uri(uri)
    tags = {"mlflow.experimentKind": "custom_model_development"}
    for location in ((tmp_path / "a").as_uri(), str(tmp_path / "b")):
        want = client.get_experiment(client.create_experiment(
            f"client {location}", artifact_location=location, tags=tags))
        got = client.get_experiment(bulk.create_experiment(f"bulk {location}", location, tags))
        for field in ("artifact_location", "lifecycle_stage", "tags"):
            assert getattr(got, field) == getattr(want, field), field
        assert got.name == f"bulk {location}" and got.creation_time >= want.creation_time
        assert bulk.experiment_id(got.name) == got.experiment_id
        found = client.search_experiments(filter_string=f"name = 'bulk {location}'")
        assert [e.experiment_id for e in found] == [got.experiment_id]
        with pytest.raises(Refused, match="exists"):  # the name is taken: nothing made
            bulk.create_experiment(f"bulk {location}", location, tags)
    for location in (None, "relative/dir", "s3://bucket/x", "file:/tmp/x"):
        with pytest.raises(Refused):  # MLflow derives or resolves these: its client's
            bulk.create_experiment("derived", location, tags)
    assert client.get_experiment_by_name("derived") is None
    bulk.close()
