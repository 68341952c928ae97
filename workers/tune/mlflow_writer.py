"""A background writer for the driver's MLflow child runs.

Why: Tune's function trainables report synchronously, so every millisecond a
driver callback spends in MLflow is a millisecond every running trial stands
still. One ``log_batch`` per epoch per trial on the SQLite store costs 8–12 ms
(two commits, several fsyncs). Here the driver's callback only *enqueues*
(microseconds) and one daemon thread writes:

* **coalesced**: everything pending for a run goes out in as few ``log_batch``
  calls as MLflow allows (``MAX_METRICS_PER_BATCH`` 1000 metrics,
  ``MAX_PARAMS_TAGS_PER_BATCH`` 100 params and 100 tags,
  ``MAX_ENTITIES_PER_BATCH`` 1000 in all, per call — ``workers.tune.mlflow_runs``),
  and the writer lingers ``interval_s`` between rounds of metric-only writes so
  several epochs share one call. Creating a run, a flush or someone waiting for
  a run id skips the linger.
* **in order per run**: a run is found or created before anything is logged to
  it, its params go with its first ``log_batch``, and ``set_terminated`` is a
  barrier: what was enqueued before it is written before it.
* **bounded**: at ``max_pending`` queued operations the producer waits (back-
  pressure) instead of growing memory without limit.
* **bulk SQL where the store allows**: given a ``bulk_factory``
  (``workers.tune.mlflow_bulk``), child runs are made, filled and ended straight
  in MLflow's SQL tables instead of a client call per run per kind of write
  (bench B6 measures both): a transaction to make a run, and one per round for
  every run's values, tags and ends (``BulkStore.write_runs``). A call that path
  refuses (a deleted run, a value MLflow would reject) goes to the client, a
  refused round's writes run by run; any other failure turns the path off for
  the writer's life, with a warning.
* **never silent, never fatal**: a failed MLflow call is retried with back-off;
  what still fails is logged at ERROR with what was dropped and counted in
  ``stats``; the thread itself never dies of it, and the driver never sees it.

The queue, the thread and the coalescing live here; how a round's writes reach
MLflow (bulk or client, retries, finding or making a run) in
``workers.tune.mlflow_sending``.

A driver killed with operations still queued loses them (they are metrics of
epochs a restored round re-reports from its last checkpoint anyway); a normal
exit flushes through :func:`_close_all_at_exit`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any, Callable

from workers.tune.mlflow_runs import LazyClient
from workers.tune.mlflow_sending import RunSending, Op

log = logging.getLogger(__name__)


class MlflowWriter(RunSending):
    """One daemon thread writing the child runs of one job; see the module docstring.

    ``run_ids`` (unit -> run id) is shared with the caller and filled in as runs
    are found or created; :meth:`run_id` waits for one.
    """

    def __init__(self, client_factory: Callable[[], Any], experiment_id: str,
                 parent_run_id: str, job_id: str, run_ids: dict[str, str], *,
                 interval_s: float = 1.0, max_pending: int = 10_000, retries: int = 3,
                 backoff_s: float = 0.5, bulk_factory: Callable[[], Any] | None = None) -> None:
        self._client_factory = client_factory
        self._bulk_factory = bulk_factory
        self._bulk: Any = None  # the writer thread's BulkStore, made with its client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.job_id = job_id
        self.run_ids = run_ids
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.retries = retries
        self.backoff_s = backoff_s
        self._cond = threading.Condition()
        self._pending: dict[str, list[Op]] = {}
        self._queued = 0  # operations in _pending
        self._enqueued = 0  # operations ever enqueued
        self._done = 0  # operations written (or given up)
        self._urgent = False
        self._closing = False
        self._failed: set[str] = set()  # units whose run could not be made (yet)
        self._open_params: dict[str, dict[str, str]] = {}  # writer thread only
        self._known: dict[str, str] | None = None  # this job's runs found in MLflow
        self._last_write = 0.0
        #: This round's bulk writes, sent together at its end (``_flush_batch``); None
        #: outside a round or without the bulk path.
        self._batch: list[tuple[str, str, list, dict, Op | None, list[Op]]] | None = None
        #: Per unit, the highest step whose metrics MLflow has (written or given up):
        #: what a snapshot of the driver's callbacks may call recorded.
        self.written: dict[str, int] = {}
        self.stats = {"calls": 0, "cpu_s": 0.0, "wall_s": 0.0, "rounds": 0, "errors": 0,
                      "dropped": 0, "waits": 0, "bulk_calls": 0}
        self.cpu_by_call: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # --- producer side (the driver thread) -------------------------------------------

    def open(self, unit: str, params: dict[str, Any]) -> None:
        """Find or create the unit's run; params are logged with its first batch."""
        self._put(unit, self._open_op(params))

    def log(self, unit: str, metrics: dict[str, float], timestamp: int, step: int,
            tags: dict[str, str] | None = None, open_params: dict[str, Any] | None = None
            ) -> None:
        """Metrics of one step; ``open_params``: open the run first, in the same breath,
        so its params share a call with these metrics."""
        op = Op("data", metrics=[(k, v, timestamp, step) for k, v in metrics.items()],
                 tags=dict(tags or {}))
        self._put(unit, *([] if open_params is None else [self._open_op(open_params)]), op)

    def terminate(self, unit: str, status: str, end_time: int | None = None,
                  open_params: dict[str, Any] | None = None) -> None:
        op = Op("end", status=status, end_time=end_time or int(time.time() * 1000))
        self._put(unit, *([] if open_params is None else [self._open_op(open_params)]), op)

    @staticmethod
    def _open_op(params: dict[str, Any]) -> Op:
        return Op("open", params={k: str(v) for k, v in sorted(params.items())})

    def _put(self, unit: str, *ops: Op) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("the MLflow writer is closed")
            while self._queued >= self.max_pending and self._thread.is_alive():
                self.stats["waits"] += 1  # back-pressure: the writer is behind
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(1.0)
            self._pending.setdefault(unit, []).extend(ops)
            self._queued += len(ops)
            self._enqueued += len(ops)
            # A new run is made at once (the job store wants its id); metrics linger.
            self._urgent = self._urgent or any(op.kind == "open" for op in ops)
            self._cond.notify_all()

    def run_id(self, unit: str, timeout: float = 30.0) -> str | None:
        """The unit's run id, waiting (writer hurried) up to ``timeout`` for its creation."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while unit not in self.run_ids and unit not in self._failed:
                pending = unit in self._pending
                left = deadline - time.monotonic()
                if left <= 0 or not (pending or self._queued or self._enqueued > self._done):
                    break
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(left)
            return self.run_ids.get(unit)

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until everything enqueued so far is written (or given up); True if so."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._enqueued
            while self._done < target and self._thread.is_alive():
                self._urgent = True
                self._cond.notify_all()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self._done >= target

    def close(self, timeout: float | None = 60.0) -> bool:
        """Flush, then stop the thread. True if everything was written in time."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout if timeout is not None else None)
        _LIVE.discard(self)
        if not flushed:
            log.error("MLflow writer closed with %d operations unwritten", self._queued)
        return flushed and not self._thread.is_alive()

    # --- the writer thread ---------------------------------------------------------------

    def _loop(self) -> None:
        client = None
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    if self._bulk is not None:
                        self._bulk.close()
                    return
                # Linger so several epochs (and trials) share a call, unless hurried.
                deadline = self._last_write + self.interval_s
                while not (self._urgent or self._closing) and time.monotonic() < deadline:
                    self._cond.wait(deadline - time.monotonic())
                work, self._pending = self._pending, {}
                count, self._queued, self._urgent = self._queued, 0, False
                self._cond.notify_all()  # room for blocked producers
            self._last_write = time.monotonic()
            cpu = time.thread_time()
            try:
                if client is None:
                    self._bulk = self._make_bulk()
                    client = LazyClient(self._client_factory)
                self._batch = [] if self._bulk is not None else None
                for unit, ops in work.items():
                    self._write_unit(client, unit, ops)
                self._flush_batch(client)
            except BaseException:  # noqa: BLE001 - the thread must outlive any failure
                self._batch = None
                log.exception("MLflow writer: a round of writes failed; %d operations lost",
                              count)
                self.stats["dropped"] += count
            self.stats["cpu_s"] += time.thread_time() - cpu
            self.stats["wall_s"] += time.monotonic() - self._last_write
            self.stats["rounds"] += 1
            with self._cond:
                self._done += count
                self._cond.notify_all()

    def _write_unit(self, client: Any, unit: str, ops: list[Op]) -> None:
        """Write one unit's queued operations in order, coalescing data between barriers."""
        for op in ops:
            if op.kind == "open":
                self._open_params.setdefault(unit, op.params)
        params: dict[str, str] = {}
        if unit not in self.run_ids:
            try:
                if unit not in self._open_params:
                    raise RuntimeError("no run was opened for it")
                params = self._open(client, unit, self._open_params[unit])
            except Exception as exc:  # noqa: BLE001 - retried next round, if any
                with self._cond:
                    self._failed.add(unit)
                    self._cond.notify_all()
                self._give_up(unit, "its run", exc, ops)
                return
        run_id = self.run_ids[unit]
        metrics: list[tuple[str, float, int, int]] = []
        tags: dict[str, str] = {}
        held: list[Op] = []  # the data ops in metrics/tags, for the error message

        def send(end: Op | None = None) -> None:
            # params: a run the client made (the bulk path writes them with the run);
            # they share the client's call with what else is pending.
            if not params and self._batch is not None and (metrics or tags or end):
                self._batch.append((unit, run_id, list(metrics), dict(tags), end,
                                    held + ([end] if end else [])))
            else:
                self._send(client, unit, run_id, metrics, params, tags, end)
            params.clear(), metrics.clear(), tags.clear(), held.clear()

        for op in ops:
            try:
                if op.kind == "data":
                    metrics.extend(op.metrics)
                    tags.update(op.tags)
                    held.append(op)
                elif op.kind == "end":
                    send(op)
            except Exception as exc:  # noqa: BLE001 - logged, counted, never fatal
                self._give_up(unit, "log_batch" if held else op.kind, exc, held or [op])
                params.clear(), metrics.clear(), tags.clear(), held.clear()
        try:
            send()
        except Exception as exc:  # noqa: BLE001
            self._give_up(unit, "log_batch", exc, held)

    def _give_up(self, unit: str, what: str, exc: BaseException, ops: list[Op]) -> None:
        self.stats["dropped"] += len(ops)
        log.error("MLflow writer gave up on %s for %s after %d attempts; dropped %d "
                  "operations (%d metric values): %s", what, unit, self.retries + 1, len(ops),
                  sum(len(o.metrics) for o in ops), exc)

_LIVE: "weakref.WeakSet[MlflowWriter]" = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    """A driver that returns without closing its writer still gets its metrics written."""
    for writer in list(_LIVE):
        writer.close(timeout=30.0)
