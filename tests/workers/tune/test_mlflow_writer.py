"""The driver's background MLflow writer, against a fake client: coalescing, order,
limits, flush, retries, back-pressure, and the callback's pickling."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from search_spaces import validate_spec
from tests.workers.tune.conftest import tiny
from workers.tune import mlflow_runs as mw
from workers.tune import mlflow_writer
from workers.tune.mlflow_runs import batches
from workers.tune.mlflow_writer import MlflowWriter


class FakeClient:
    """Records calls in order; ``fail`` maps a method name to how many calls fail first."""

    def __init__(self, fail: dict[str, int] | None = None, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = dict(fail or {})
        self.delay = delay
        self.runs = 0
        self.lock = threading.Lock()

    def _maybe_fail(self, name: str) -> None:
        time.sleep(self.delay)
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise RuntimeError(f"{name}: database is locked")

    def search_runs(self, experiments: list[str], **kw: Any) -> list[Any]:
        self._maybe_fail("search_runs")
        self.calls.append(("search_runs", kw["filter_string"]))
        return []

    def create_run(self, experiment_id: str, tags: dict, run_name: str) -> Any:
        self._maybe_fail("create_run")
        self.runs += 1
        self.calls.append(("create_run", run_name))
        return SimpleNamespace(info=SimpleNamespace(run_id=f"run-{run_name}"))

    def log_batch(self, run_id: str, metrics: list = (), params: list = (),
                  tags: list = ()) -> None:
        self._maybe_fail("log_batch")
        assert len(metrics) <= 1000 and len(params) <= 100 and len(tags) <= 100
        assert len(metrics) + len(params) + len(tags) <= 1000
        self.calls.append(("log_batch", (run_id, list(metrics), list(params), list(tags))))

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        self._maybe_fail("set_terminated")
        self.calls.append(("set_terminated", (run_id, status)))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def writer_for(client: FakeClient, **kw: Any) -> tuple[MlflowWriter, dict[str, str]]:
    run_ids: dict[str, str] = {}
    kw.setdefault("interval_s", 60.0)  # nothing goes out on its own: only flushes write
    kw.setdefault("backoff_s", 0.0)
    return MlflowWriter(lambda: client, "1", "parent", "job", run_ids, **kw), run_ids


def test_batches_respect_mlflow_limits() -> None:
    out = batches(list(range(2500)), list(range(250)), list(range(150)))
    for m, p, t in out:
        assert len(m) <= mw.MAX_METRICS_PER_BATCH and len(p) <= mw.MAX_PARAMS_TAGS_PER_BATCH
        assert len(t) <= mw.MAX_PARAMS_TAGS_PER_BATCH
        assert len(m) + len(p) + len(t) <= mw.MAX_ENTITIES_PER_BATCH
    assert sum(len(m) for m, _, _ in out) == 2500 and sum(len(p) for _, p, _ in out) == 250
    assert sum(len(t) for _, _, t in out) == 150 and len(out) == 3
    assert batches([], [], []) == [([], [], [])]


def test_epochs_coalesce_into_one_log_batch_per_run() -> None:
    client = FakeClient()
    writer, run_ids = writer_for(client)
    writer.log("t0", {"val_accuracy": 0.1, "loss": 1.0}, 1001, 1, {"regtune.node_ip": "x"},
               open_params={"reg_lambda": 0.1, "l1_ratio": 0})
    assert writer.run_id("t0") == "run-t0"  # creation is not held back by the linger
    for epoch in range(2, 11):
        writer.log("t0", {"val_accuracy": 0.1 * epoch, "loss": 1.0}, 1000 + epoch, epoch)
    writer.terminate("t0", "FINISHED")
    assert writer.close()
    # The run is made at once, its params going with the first epoch; the next nine
    # epochs share one call.
    assert client.names() == ["search_runs", "create_run", "log_batch", "log_batch",
                              "set_terminated"]
    _, metrics, params, tags = client.calls[2][1]
    assert [(m.key, m.step) for m in metrics] == [("val_accuracy", 1), ("loss", 1)]
    assert {p.key for p in params} == {"reg_lambda", "l1_ratio"}
    assert [t.key for t in tags] == ["regtune.node_ip"] and run_ids == {"t0": "run-t0"}
    _, metrics, params, tags = client.calls[3][1]
    assert [m.step for m in metrics] == [s for s in range(2, 11) for _ in (0, 1)]
    assert not params and not tags


def test_order_per_run_terminations_are_barriers() -> None:
    client = FakeClient()
    writer, _ = writer_for(client)
    writer.open("t0", {"a": 1})
    writer.log("t0", {"m": 1.0}, 1, 1)
    writer.terminate("t0", "FAILED")
    writer.log("t0", {"m": 2.0}, 2, 2)  # restarted after its error
    writer.terminate("t0", "FINISHED")
    writer.open("t1", {"a": 2})
    writer.terminate("t1", "FAILED")  # failed before its first result
    assert writer.close()
    t0 = [(n, a) for n, a in client.calls if n in ("log_batch", "set_terminated")
          and a[0] == "run-t0"]
    assert [n for n, _ in t0] == ["log_batch", "set_terminated", "log_batch", "set_terminated"]
    assert [a[1] for n, a in t0 if n == "set_terminated"] == ["FAILED", "FINISHED"]
    assert ("set_terminated", ("run-t1", "FAILED")) in client.calls
    assert client.names().count("search_runs") == 1  # one look-up per writer, not per run


def test_metrics_are_written_by_themselves_after_the_interval() -> None:
    client = FakeClient()
    writer, _ = writer_for(client, interval_s=0.05)
    writer.open("t0", {})
    writer.log("t0", {"m": 1.0}, 1, 1)
    deadline = time.monotonic() + 5
    while "log_batch" not in client.names() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "log_batch" in client.names()
    writer.close()


def test_a_failing_call_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient(fail={"log_batch": 2, "create_run": 1})
    writer, _ = writer_for(client, retries=3)
    writer.open("t0", {})
    writer.log("t0", {"m": 1.0}, 1, 1)
    assert writer.close()
    assert client.names().count("log_batch") == 1 and writer.stats["errors"] == 3
    assert writer.stats["dropped"] == 0 and client.runs == 1


def test_what_still_fails_is_logged_and_counted_and_the_writer_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    client = FakeClient(fail={"log_batch": 3})
    writer, _ = writer_for(client, retries=2)
    writer.open("t0", {})
    writer.log("t0", {"m": 1.0}, 1, 1)
    writer.log("t0", {"m": 2.0}, 2, 2)
    with caplog.at_level(logging.ERROR, logger=mlflow_writer.__name__):
        assert writer.flush()
    assert writer.stats["dropped"] == 2
    assert "dropped 2 operations (2 metric values)" in caplog.text
    writer.log("t0", {"m": 3.0}, 3, 3)  # the thread is alive and writes again
    writer.terminate("t0", "FINISHED")
    assert writer.close()
    assert client.names()[-2:] == ["log_batch", "set_terminated"]


def test_a_run_that_cannot_be_made_is_retried_at_the_next_round() -> None:
    client = FakeClient(fail={"create_run": 2})
    writer, _ = writer_for(client, retries=1)
    writer.open("t0", {"a": 1})
    writer.log("t0", {"m": 1.0}, 1, 1)
    assert writer.run_id("t0", timeout=5) is None  # given up for now, not waited on forever
    writer.log("t0", {"m": 2.0}, 2, 2)
    assert writer.close()
    assert client.runs == 1 and writer.run_ids == {"t0": "run-t0"}
    _, metrics, params, _ = [a for n, a in client.calls if n == "log_batch"][0]
    assert [m.value for m in metrics] == [2.0] and [p.key for p in params] == ["a"]


def test_a_full_queue_makes_the_producer_wait() -> None:
    client = FakeClient(delay=0.01)
    writer, _ = writer_for(client, max_pending=3, interval_s=0.0)
    writer.open("t0", {})
    for epoch in range(1, 30):
        writer.log("t0", {"m": float(epoch)}, epoch, epoch)
        assert writer._queued <= 3
    assert writer.close()
    steps = [m.step for n, a in client.calls if n == "log_batch" for m in a[1]]
    assert steps == list(range(1, 30)) and writer.stats["waits"] > 0


def test_a_closed_writer_is_not_left_running_and_refuses_more() -> None:
    writer, _ = writer_for(FakeClient())
    assert writer.close() and not writer._thread.is_alive()
    with pytest.raises(RuntimeError):
        writer.log("t0", {}, 1, 1)


# --- the callback ------------------------------------------------------------------------


def trial(trial_id: str, **config: Any) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"reg_lambda": 1e-3, "l1_ratio": 0.5,
                                                      **config}, last_result={})


def result(epoch: int, acc: float) -> dict[str, Any]:
    return {"epoch": epoch, "training_iteration": epoch, "val_accuracy": acc,
            "train_loss": 1.0 / epoch, "node_ip": "127.0.0.1", "node_id": "n1"}


def test_the_callback_only_enqueues_pickles_without_its_writer_and_rebuilds_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.tune import reporting

    client = FakeClient()
    spec = validate_spec(tiny("w"))
    cb = reporting.MlflowTrialCallback("sqlite:///unused", "1", "parent", "job", spec,
                                       interval_s=60.0)
    monkeypatch.setattr(cb, "_client", client)
    built: list[MlflowWriter] = []
    real = reporting.MlflowWriter

    def fake_writer(_factory: Any, *args: Any, **kw: Any) -> MlflowWriter:
        built.append(real(lambda: client, *args, **{**kw, "backoff_s": 0.0}))
        return built[-1]

    monkeypatch.setattr(reporting, "MlflowWriter", fake_writer)
    t = trial("t0")
    cb.on_trial_result(1, [], t, result(1, 0.5))
    cb.on_trial_result(1, [], t, result(1, 0.5))  # a repeated epoch is not logged twice
    assert cb.writer.run_id("t0") == "run-t0"
    state = pickle.loads(pickle.dumps(cb))  # Tune's snapshot, while the writer runs
    assert state._writer is None and state.run_ids == {"t0": "run-t0"}
    cb.on_experiment_end([])  # end of the round: flushed and stopped
    assert not built[0]._thread.is_alive() and cb._writer is None
    assert [n for n, _ in client.calls].count("log_batch") == 1
    # The restored copy: a new writer, the known run reused, epoch 1 not repeated.
    state.on_trial_result(1, [], t, result(1, 0.5))
    state.on_trial_result(1, [], t, result(2, 0.6))
    t.last_result = result(2, 0.6)
    state.on_trial_complete(1, [], t)
    assert state.close() and len(built) == 2
    assert client.runs == 1
    steps = [m.step for n, a in client.calls if n == "log_batch" for m in a[1]
             if m.key == "val_accuracy"]
    assert steps == [1, 2] and client.calls[-1] == ("set_terminated", ("run-t0", "FINISHED"))
