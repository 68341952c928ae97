"""The bulk path writes the child runs MLflow's own calls write (create_run, log_batch,
set_terminated), on SQLite and PostgreSQL, refuses what MLflow would refuse, and is not
used where it cannot be sure of that; the writer falls back to MLflow's client."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.tune.mlflow_bulk import BulkStore
from workers.tune.mlflow_rows import Refused, RunNotActive, metric_rows, newest_per_key
from workers.tune.mlflow_runs import child_run_tags
from workers.tune.mlflow_writer import MlflowWriter

NAN, INF = float("nan"), float("inf")

# Three calls, as the writer makes them for one run over a job: duplicates inside a
# call and across calls, NaN and ±inf, an older step after a newer one, ties on step
# broken by timestamp and then by value, a value identical to one already stored.
CALLS = [
    [("loss", 1.0, 100, 1), ("loss", 0.5, 101, 2), ("acc", NAN, 100, 1),
     ("acc", INF, 100, 2), ("loss", 0.5, 101, 2), ("acc", NAN, 100, 1)],
    [("loss", 0.7, 99, 1), ("acc", 0.3, 102, 2), ("loss", 0.5, 101, 2),
     ("g", -INF, 5, 0)],
    [("loss", 0.4, 90, 2), ("loss", 0.6, 90, 2), ("acc", 0.9, 102, 2), ("g", 3.0, 5, 0)],
]
KEYS = ("loss", "acc", "g")


@pytest.fixture
def client(mlflow_db: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_db)


@pytest.fixture
def bulk(mlflow_db: str) -> Iterator[BulkStore]:
    made = BulkStore.for_uri(mlflow_db)
    assert made is not None, "the bulk path refused a store MLflow made"
    yield made
    made.close()


def new_runs(client: Any, n: int) -> list[str]:
    experiment = client.create_experiment(f"bulk-{time.time_ns()}")
    return [client.create_run(experiment).info.run_id for _ in range(n)]


def history(client: Any, run_id: str) -> dict[str, list[tuple]]:
    # NaN != NaN: compare reprs, which also tells 0.0 from -0.0.
    return {key: sorted((repr(m.value), m.step, m.timestamp)
                        for m in client.get_metric_history(run_id, key)) for key in KEYS}


def test_the_same_calls_leave_the_same_run_in_mlflow(client: Any, bulk: BulkStore) -> None:
    from mlflow.entities import Metric

    by_batch, by_bulk = new_runs(client, 2)
    for call in CALLS:
        client.log_batch(by_batch, metrics=[Metric(*m) for m in call])
        bulk.log_metrics(by_bulk, call)
    want, got = client.get_run(by_batch).data.metrics, client.get_run(by_bulk).data.metrics
    assert repr(sorted(got.items())) == repr(sorted(want.items()))
    assert got["loss"] == 0.5 and got["acc"] == 0.9 and got["g"] == 3.0  # not vacuous
    assert history(client, by_bulk) == history(client, by_batch)
    assert len(history(client, by_bulk)["loss"]) == 5
    # MLflow's search reads latest_metrics: both runs are found, and by the same filter.
    experiment = client.get_run(by_bulk).info.experiment_id
    found = client.search_runs([experiment], filter_string="metrics.loss = 0.5")
    assert {r.info.run_id for r in found} == {by_batch, by_bulk}


def test_a_runs_rows_go_in_one_statement_per_table(client: Any, bulk: BulkStore) -> None:
    """All of a write's metric rows, latest values, tags and params reach the database in
    one statement execution per table (SQLite: one ``executemany`` of plain tuples;
    PostgreSQL: SQLAlchemy's multi-row VALUES), not one per row, and are stored as MLflow
    reads them (the SQLite path binds them itself: ``mlflow_bulk._Many``)."""
    import sqlalchemy as sa

    run_id = new_runs(client, 1)[0]
    values = [(f"m{j}", j / 7, 1000 + step, step) for step in range(10) for j in range(18)]
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        seen.append((statement.split("(")[0].split()[-1], parameters))

    sa.event.listen(bulk.engine, "before_cursor_execute", record)
    try:
        bulk.write_run(run_id, values, {"t1": "a", "t2": "b"}, ("FINISHED", 2000),
                       {"p1": "x", "p2": "y"})
    finally:
        sa.event.remove(bulk.engine, "before_cursor_execute", record)
    inserts = [table for table, _ in seen if table in ("metrics", "latest_metrics", "tags",
                                                        "params")]
    assert sorted(inserts) == ["latest_metrics", "metrics", "params", "tags"], seen
    run = client.get_run(run_id)
    assert run.data.metrics == {f"m{j}": j / 7 for j in range(18)}
    assert run.data.params == {"p1": "x", "p2": "y"}
    assert (run.data.tags["t1"], run.info.status, run.info.end_time) == ("a", "FINISHED", 2000)
    assert len(client.get_metric_history(run_id, "m5")) == 10


def test_a_value_logged_again_is_not_a_second_row(client: Any, bulk: BulkStore) -> None:
    (run,) = new_runs(client, 1)
    assert bulk.log_metrics(run, CALLS[0]) == 4  # two exact repeats inside the call
    bulk.log_metrics(run, CALLS[0])  # a resumed driver re-reporting an epoch
    assert len(client.get_metric_history(run, "loss")) == 2


def test_a_deleted_run_is_refused_and_nothing_is_written(client: Any,
                                                         bulk: BulkStore) -> None:
    (run,) = new_runs(client, 1)
    client.delete_run(run)
    with pytest.raises(RunNotActive, match="deleted"):
        bulk.log_metrics(run, CALLS[0])
    client.restore_run(run)
    assert client.get_run(run).data.metrics == {}
    with pytest.raises(RunNotActive, match="missing"):
        bulk.log_metrics("0" * 32, CALLS[0])


def test_runs_written_together_are_written_alike_or_not_at_all(client: Any,
                                                               bulk: BulkStore) -> None:
    """write_runs is write_run for several runs in one transaction: the same rows, and
    a refusal of any one (a run deleted meanwhile) writes none of them. (Each call of
    CALLS sends 4 distinct values.)"""
    alone, first, second = new_runs(client, 3)
    for call in CALLS:
        bulk.write_run(alone, call, {"t": "x"}, None)
    assert bulk.write_runs([(run, call, {"t": "x"}, None)
                            for call in CALLS for run in (first, second)]) == 2 * 3 * 4
    bulk.write_runs([(first, [], None, ("FINISHED", 7)), (second, [], None, ("FINISHED", 7))])
    for run in (first, second):
        assert history(client, run) == history(client, alone)
        got = client.get_run(run)
        assert got.data.metrics == client.get_run(alone).data.metrics
        assert got.data.tags["t"] == "x" and got.info.status == "FINISHED"
    (deleted,) = new_runs(client, 1)
    client.delete_run(deleted)
    with pytest.raises(RunNotActive, match="deleted"):
        bulk.write_runs([(alone, [("late", 1.0, 1, 1)], None, None), (deleted, CALLS[0])])
    assert "late" not in client.get_run(alone).data.metrics


def test_a_run_made_in_bulk_is_the_run_mlflows_client_makes(mlflow_db: str, client: Any,
                                                           bulk: BulkStore) -> None:
    """The same child run both ways; MLflow reads back the same run and finds both
    by the filters its UI uses."""
    from mlflow.entities import Metric, Param, RunTag

    experiment = client.create_experiment(f"runs-{time.time_ns()}")
    parent = client.create_run(experiment).info.run_id
    tags = child_run_tags(parent, "job", "t7")
    params = {"lr": "0.1", "penalty.lambda": "0.001"}
    by_client = client.create_run(experiment, tags=tags, run_name="t7").info.run_id
    client.log_batch(by_client, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(*m) for m in CALLS[0]], tags=[RunTag("regtune.node", "n")])
    client.set_terminated(by_client, "FINISHED", end_time=2000)
    by_bulk = bulk.create_run(experiment, "t7", tags, params)
    bulk.write_run(by_bulk, CALLS[0], {"regtune.node": "n"}, ("FINISHED", 2000))

    def seen(run_id: str) -> dict[str, Any]:
        run = client.get_run(run_id)
        info = {k: v for k, v in vars(run.info).items()
                if k not in ("_run_id", "_run_uuid", "_start_time", "_artifact_uri")}
        return {"info": info, "params": run.data.params, "tags": run.data.tags,
                "metrics": repr(sorted(run.data.metrics.items())),
                "artifacts": run.info.artifact_uri.replace(run_id, "<id>")}

    want, got = seen(by_client), seen(by_bulk)
    assert got == want
    assert got["info"]["_status"] == "FINISHED" and got["info"]["_run_name"] == "t7"
    assert got["tags"]["mlflow.parentRunId"] == parent and got["params"] == params
    for query in (f"tags.mlflow.parentRunId = '{parent}'", "params.lr = '0.1'",
                  "attributes.status = 'FINISHED'", "attributes.run_name = 't7'",
                  "tags.`regtune.trial_id` = 't7'"):
        found = {r.info.run_id for r in client.search_runs([experiment], query)}
        assert found == {by_client, by_bulk}, query


def test_what_mlflow_would_refuse_is_refused_and_nothing_is_written(
        client: Any, bulk: BulkStore) -> None:
    experiment = client.create_experiment(f"refuse-{time.time_ns()}")
    tags = {"regtune.job_id": "job"}
    for bad in ({"params": {"../x": "1"}}, {"params": {"note": "x" * 6001}},
                {"params": {"lr": 0.1}}, {"tags": {**tags, "mlflow.runName": "other"}}):
        with pytest.raises(Refused):
            bulk.create_run(experiment, "t0", bad.get("tags", tags), bad.get("params", {}))
    assert client.search_runs([experiment]) == []
    run = bulk.create_run(experiment, "t0", tags, {"lr": "0.1"})
    for args in (([], {"mlflow.runName": "renamed"}, None), ([], {}, ("DONE", 1)),
                 ([("bad key!", 1.0, 1, 1)], {}, None), ([], {"t": "x" * 8001}, None)):
        with pytest.raises(Refused):
            bulk.write_run(run, *args)
    client.delete_run(run)
    with pytest.raises(RunNotActive, match="deleted"):
        bulk.write_run(run, CALLS[0], {"t": "1"}, ("FINISHED", 5))
    client.restore_run(run)
    kept = client.get_run(run)
    assert kept.info.status == "RUNNING" and kept.info.run_name == "t0"
    assert kept.data.metrics == {} and "t" not in kept.data.tags
    client.delete_experiment(experiment)
    with pytest.raises(Refused, match="deleted"):
        bulk.create_run(experiment, "t1", tags)


def test_rows_as_mlflow_stores_them() -> None:
    rows = metric_rows("r", [("a", NAN, 1, 1), ("a", NAN, 1, 1), ("b", -INF, 2, 3),
                             ("c", 2, 3, 4)])
    assert [(r["key"], r["value"], r["is_nan"]) for r in rows] == [
        ("a", 0.0, True), ("b", -1.7976931348623157e308, False), ("c", 2.0, False)]
    newest = newest_per_key(metric_rows("r", [("k", 1.0, 5, 2), ("k", 9.0, 1, 1),
                                              ("k", 0.5, 5, 2), ("k", 2.0, 4, 2)]))
    assert [(r["value"], r["timestamp"], r["step"]) for r in newest] == [(1.0, 5, 2)]


def test_not_used_where_it_cannot_be_sure(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    assert BulkStore.for_uri("http://127.0.0.1:5000") is None  # an MLflow server
    assert BulkStore.for_uri("databricks") is None
    assert BulkStore.for_uri(f"file://{tmp_path}") is None
    missing = tmp_path / "missing.db"
    assert BulkStore.for_uri(f"sqlite:///{missing}") is None
    assert not missing.exists()  # MLflow makes its store; the bulk path never makes one
    assert BulkStore.for_uri("sqlite://") is None  # in memory: not MLflow's tables
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with caplog.at_level(logging.WARNING, logger="workers.tune.mlflow_bulk"):
        assert BulkStore.for_uri(f"sqlite:///{empty}") is None  # no MLflow tables
    assert "MLflow's client" in caplog.text
    # An MLflow whose metrics table gained a column: the rows here would be incomplete.
    changed = tmp_path / "changed.db"
    MlflowClient(tracking_uri=f"sqlite:///{changed}").search_experiments(max_results=1)
    with sqlite3.connect(changed) as db:
        db.execute("ALTER TABLE metrics ADD COLUMN model_version TEXT")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workers.tune.mlflow_bulk"):
        assert BulkStore.for_uri(f"sqlite:///{changed}") is None
    assert "model_version" in caplog.text


# --- the writer with the bulk path --------------------------------------------------------

def writer(client_uri: str, bulk_factory: Callable[[], Any] | None) -> MlflowWriter:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=client_uri)
    experiment = client.create_experiment(f"writer-{time.time_ns()}")
    parent = client.create_run(experiment).info.run_id
    return MlflowWriter(lambda: MlflowClient(tracking_uri=client_uri), experiment, parent,
                        "job", {}, interval_s=60.0, backoff_s=0.0, bulk_factory=bulk_factory)


def write_two_trials(w: MlflowWriter) -> None:
    """Two trials' runs, values and ends, all in one round of the writer: they are
    queued while the test holds the writer's lock, so its thread takes them at once."""
    with w._cond:
        for unit in ("t0", "t1"):
            for epoch in (1, 2, 3):
                w.log(unit, {"loss": 1.0 / epoch, "acc": 0.1 * epoch}, 1000 + epoch, epoch,
                      open_params={"lr": 0.1} if epoch == 1 else None)
            w.terminate(unit, "FINISHED")
    assert w.close()


def check_runs(client: Any, w: MlflowWriter) -> None:
    for unit in ("t0", "t1"):
        run = client.get_run(w.run_ids[unit])
        assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
        assert run.data.metrics == {"loss": 1.0 / 3, "acc": 0.1 * 3}
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert w.written == {"t0": 3, "t1": 3} and w.stats["dropped"] == 0


def test_the_writer_writes_child_runs_in_bulk(mlflow_db: str, client: Any) -> None:
    w = writer(mlflow_db, lambda: BulkStore.for_uri(mlflow_db))
    write_two_trials(w)
    check_runs(client, w)
    # One look for runs an earlier driver made; per run, one transaction to make it
    # (tags, params); one for both runs' values and ends. MLflow's client is never made.
    assert w.stats["bulk_calls"] == 4
    assert {"runs_tagged (bulk SQL)", "create_run (bulk SQL)",
            "write_runs (bulk SQL)"} <= set(w.cpu_by_call)
    assert not {"search_runs", "create_run", "log_batch", "set_terminated"} & set(w.cpu_by_call)


class RefusingBatches:
    """The real bulk path, except that it refuses every write of several runs at once."""

    def __init__(self, bulk: BulkStore) -> None:
        self.bulk = bulk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bulk, name)

    def write_runs(self, writes: Any) -> int:
        raise RunNotActive("one of them was deleted meanwhile")


def test_a_refused_batch_is_written_run_by_run(mlflow_db: str, client: Any) -> None:
    w = writer(mlflow_db, lambda: RefusingBatches(BulkStore.for_uri(mlflow_db)))
    write_two_trials(w)
    check_runs(client, w)
    # The search, two runs made, then each run's values and end on its own, still in bulk.
    assert w.stats["bulk_calls"] == 5 and "write_run (bulk SQL)" in w.cpu_by_call
    assert not {"log_batch", "set_terminated"} & set(w.cpu_by_call)


def test_a_refused_call_goes_to_mlflows_client(mlflow_db: str, client: Any) -> None:
    """A param value over MLflow's limit: the client makes that run (MLflow truncates
    the value) and writes its first round; later rounds go in bulk again."""
    w = writer(mlflow_db, lambda: BulkStore.for_uri(mlflow_db))
    w.log("t0", {"loss": 1.0}, 1000, 1, open_params={"note": "x" * 7000})
    assert w.flush()
    w.log("t0", {"loss": 0.5}, 1001, 2)
    w.terminate("t0", "FINISHED")
    assert w.close() and w.stats["dropped"] == 0
    run = client.get_run(w.run_ids["t0"])
    assert run.data.params == {"note": "x" * 6000} and run.info.status == "FINISHED"
    assert run.data.metrics == {"loss": 0.5}
    assert "create_run" in w.cpu_by_call and "log_batch" in w.cpu_by_call
    assert "write_run (bulk SQL)" in w.cpu_by_call and "set_terminated" not in w.cpu_by_call


class BrokenBulk:
    """Fails as a schema MLflow changed under us would (or refuses, as for a deleted run)."""

    def __init__(self, error: Exception) -> None:
        self.error, self.calls, self.closed = error, 0, False

    def create_run(self, *args: Any) -> str:
        self.calls += 1
        raise self.error

    write_run = runs_tagged = create_run

    def close(self) -> None:
        self.closed = True


def test_a_failing_bulk_path_is_dropped_for_log_batch(mlflow_db: str, client: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    broken = BrokenBulk(RuntimeError("no such column: is_nan"))
    w = writer(mlflow_db, lambda: broken)
    with caplog.at_level(logging.WARNING, logger="workers.tune.mlflow_writer"):
        write_two_trials(w)
    check_runs(client, w)  # everything arrived, through log_batch
    assert broken.calls == 1 and broken.closed and w.stats["bulk_calls"] == 0  # dropped
    assert "no such column" in caplog.text
    assert {"create_run", "log_batch", "set_terminated"} <= set(w.cpu_by_call)


def test_a_refused_run_falls_back_for_that_call_only(mlflow_db: str, client: Any) -> None:
    refusing = BrokenBulk(RunNotActive("run x is deleted, not active"))
    w = writer(mlflow_db, lambda: refusing)
    write_two_trials(w)
    check_runs(client, w)
    assert refusing.calls == 3  # not dropped: the search, then each run's creation


def test_a_bulk_path_that_cannot_be_made_leaves_log_batch(mlflow_db: str, client: Any) -> None:
    def factory() -> Any:
        raise RuntimeError("cannot reach the database")

    w = writer(mlflow_db, factory)
    write_two_trials(w)
    check_runs(client, w)
    assert w.stats["bulk_calls"] == 0


def test_a_callback_from_an_older_snapshot_writes_in_bulk(mlflow_db: str, client: Any) -> None:
    """A Tune snapshot pickled before ``bulk_metrics`` existed restores without it."""
    from search_spaces import validate_spec
    from tests.workers.tune.conftest import tiny
    from workers.tune.reporting import MlflowTrialCallback

    experiment = client.create_experiment(f"old-{time.time_ns()}")
    parent = client.create_run(experiment).info.run_id
    cb = MlflowTrialCallback(mlflow_db, experiment, parent, "job", validate_spec(tiny("old")))
    del cb.__dict__["bulk_metrics"]
    w = cb.writer
    w.log("t0", {"loss": 1.0}, 1000, 1, open_params={"lr": 0.1})
    assert w.close() and w.stats["bulk_calls"] == 3
    assert client.get_run(w.run_ids["t0"]).data.metrics == {"loss": 1.0}


def test_attempt_tells_done_from_refused_and_reports_only_failures() -> None:
    """The one wrapper the parent run and the writer share: a refusal hands the call to
    MLflow's client quietly; any other error also turns the path off (on_failure)."""
    from workers.tune.mlflow_bulk import attempt

    class Bulk:
        def ok(self, x: int) -> int:
            return x + 1

        def refuse(self) -> None:
            raise Refused("MLflow's client is to do it")

        def break_(self) -> None:
            raise OSError("disk gone")

    heard: list[str] = []
    assert attempt(None, "ok", (1,), heard.append) == (False, None)
    assert attempt(Bulk(), "ok", (1,), heard.append) == (True, 2)
    assert attempt(Bulk(), "refuse", (), heard.append) == (False, None)
    assert heard == []
    assert attempt(Bulk(), "break_", (), lambda e: heard.append(str(e))) == (False, None)
    assert heard == ["disk gone"]
