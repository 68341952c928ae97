"""B6: tracking — what MLflow logging costs a trial, and whether SQLite holds up.

(a) Cost. The driver's real callbacks (``workers.tune.reporting``:
``MlflowTrialCallback``, whose hooks enqueue for a background writer thread, and
``StoreTrialCallback``) are driven in-process exactly as Tune drives them, with
the results of real epochs of a real ``Trainer``, against a fresh SQLite MLflow
store and job store. Each callback call and each epoch is timed. Tune's function
trainables report synchronously (a trial waits at ``tune.report`` until the
driver has run its callbacks for that result), so callback time per result is
time each trial stands still. Three ways side by side: "sync" flushes the writer
inside each hook (one ``log_batch`` per epoch, what the trials waited for
before), "background_log_batch" the background writer with every child run
written through MLflow's client (before the bulk path), "background" as the
driver runs now (child runs by ``workers.tune.mlflow_bulk``). Both the wait and the CPU the
writer thread still spends (``time.thread_time``) are reported. Two workloads:
the demo spec (a small MLP, short epochs) and B1's 2×768 MLP (≈0.2 s epochs).

(b) Concurrency. N processes log to one SQLite MLflow store at the same moment
(create runs, ``log_batch`` in a tight loop, terminate runs), on a store
initialised first (as the service does) and on a fresh file all N open at once.
Any "database is locked" is counted.

(c) Bulk runs. One child run through MLflow's client and through the bulk path
(``bench.b6_bulk``).

The concurrent writers (b) live in ``bench.b6_concurrency``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bench.b6_concurrency import STORES, Writers, concurrency
from bench.common import REPO, command_for, percentile, run_in_scratch

GOAL_SHARE = 0.02

WORKLOADS: dict[str, dict[str, Any]] = {
    "demo spec (digits MLP 64, 10 epochs)": {
        "spec": "search_spaces/demo.yaml", "model": None},
    "B1 workload (digits MLP 2×768)": {
        "spec": "search_spaces/demo.yaml", "model": {"name": "mlp", "hidden_sizes": [768, 768]},
        "loss": "cross_entropy"},
}


def _load_spec(workload: dict[str, Any], epochs: int | None) -> Any:
    import yaml

    from search_spaces import SearchSpec

    raw = yaml.safe_load((REPO / workload["spec"]).read_text())
    if workload.get("model"):
        raw["model"] = workload["model"]
    if workload.get("loss"):
        raw["objective"] = {**raw["objective"], "loss": workload["loss"]}
        raw["space"] = {k: v for k, v in raw["space"].items() if not k.startswith("focal")}
    if epochs:
        raw["train"] = {**raw["train"], "epochs": epochs}
    return SearchSpec.model_validate(raw)


#: How MLflow is written in a cost run.
MODES = {
    "sync": "synchronous: each result written before the trial goes on (the behaviour "
            "before the background writer: one log_batch per epoch)",
    "background_log_batch": "background writer, child runs through MLflow's client: "
                            "create_run, log_batch, set_terminated (before the bulk path; "
                            "REGTUNE_MLFLOW_BULK_METRICS=0)",
    "background": "background writer (as the driver runs now: enqueue, coalesce, flush at "
                  "round end; child runs made, filled and ended in bulk SQL, "
                  "workers/tune/mlflow_bulk.py)",
}


class _Clock:
    """Wall and this-thread CPU of each call, per key."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def timed(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        s, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.cpu.setdefault(key, []).append(time.thread_time() - c)
            self.wall.setdefault(key, []).append(time.perf_counter() - s)

    def wrap(self, obj: Any, name: str, key: str) -> None:
        """Time every call of ``obj.name`` (an instance attribute shadows the method)."""
        inner = getattr(obj, name)
        setattr(obj, name, lambda *a, **k: self.timed(key, inner, *a, **k))


def measure_cost(workload: dict[str, Any], n_trials: int, scratch: Path, mode: str,
                 epochs: int | None = None) -> dict[str, Any]:
    """Drive the driver's callbacks with real epochs; time both.

    ``mode`` "sync" flushes the writer inside each hook (what the trial waited for
    before); "background" only enqueues and flushes at the round's end, as Tune
    calls ``on_experiment_end``.
    """
    import torch

    torch.set_num_threads(1)
    import optuna

    from service.store import open_store
    from workers.training import Trainer, build_setup
    from workers.tune.reporting import MlflowTrialCallback, StoreTrialCallback
    from workers.tune.space import define_by_run, trial_params
    from workers.tune.tracking import ParentRun

    spec = _load_spec(workload, epochs)
    scratch = scratch / mode
    scratch.mkdir(parents=True, exist_ok=True)
    mlflow_uri = f"sqlite:///{scratch / 'mlflow.db'}"
    db = f"sqlite:///{scratch / 'regtune.db'}"
    store = open_store(db)
    job, _ = store.create_job(name=spec.name, owner="bench", spec=spec.model_dump(mode="json"),
                              num_trials=n_trials)
    store.transition(job.id, from_statuses={"queued"}, to="running")
    parent = ParentRun(mlflow_uri, (scratch / "mlartifacts").as_uri(), job.id, spec, "bench")
    mlflow_cb = MlflowTrialCallback(mlflow_uri, parent.experiment_id, parent.run_id, job.id,
                                    spec, bulk_metrics=mode == "background")
    store_cb = StoreTrialCallback(db, job.id, spec, mlflow_cb)
    clock = _Clock()
    for name in ("record", "update_job"):  # the store's share, split
        clock.wrap(store_cb.store, name, f"store.{name}")
    writer = mlflow_cb.writer  # started before the first trial, as at a round's first result
    sync = mode == "sync"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = define_by_run(spec)
    epoch_s: list[float] = []
    placement = {"node_ip": "127.0.0.1", "node_id": "n" * 56, "hostname": "bench",
                 "gpu_ids": "", "cuda_visible_devices": ""}

    def mlflow_hook(key: str, fn: Any, *args: Any) -> None:
        def body() -> None:
            fn(*args)
            if sync:
                writer.flush()

        clock.timed(key, body)

    for i in range(n_trials):
        ot = study.ask()
        constants = space(ot) or {}
        config = {**ot.params, **constants}
        trial = SimpleNamespace(trial_id=f"train_trial_{i:05d}", config=config, last_result={})
        trainer = Trainer(build_setup(spec, trial_params(spec, config)), "cpu")
        mlflow_hook("mlflow.start", mlflow_cb.on_trial_start, 0, [], trial)
        clock.timed("store.start", store_cb.on_trial_start, 0, [], trial)
        while not trainer.done:
            s = time.perf_counter()
            metrics = trainer.train_epoch()
            epoch_s.append(time.perf_counter() - s)
            result = {**metrics, **placement, "training_iteration": trainer.epoch,
                      "trial_id": trial.trial_id, "time_this_iter_s": epoch_s[-1]}
            trial.last_result = result
            mlflow_hook("mlflow.result", mlflow_cb.on_trial_result, 0, [], trial, result)
            clock.timed("store.result", store_cb.on_trial_result, 0, [], trial, result)
        mlflow_hook("mlflow.complete", mlflow_cb.on_trial_complete, 0, [], trial)
        clock.timed("store.complete", store_cb.on_trial_complete, 0, [], trial)
        study.tell(ot, float(metrics[spec.objective.metric]))
    clock.timed("mlflow.round_end", mlflow_cb.on_experiment_end, [])
    stats = {**writer.stats, "by_call": dict(writer.cpu_by_call)}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([parent.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    steps = sum(len(client.get_metric_history(r.info.run_id, spec.objective.metric))
                for r in runs)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    linked = sum(bool(t.mlflow_run_id) for t in store.list_trials(job.id))
    store.close()
    return {"wall": clock.wall, "cpu": clock.cpu, "epoch": epoch_s, "writer": stats,
            "check": (len(runs), finished, steps, linked), "trials": n_trials}


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    return run_in_scratch("b6", _run, quick, out_dir)


def _cost_row(label: str, mode: str, c: dict[str, Any]) -> tuple[list[Any], float, float]:
    """One row of the cost table; returns it with the wait and CPU shares."""
    wall, cpu, w = c["wall"], c["cpu"], c["writer"]
    epoch_total = sum(c["epoch"])
    n = len(wall["mlflow.result"])
    hooks = ("mlflow.start", "mlflow.result", "mlflow.complete")
    waited = sum(sum(wall[k]) for k in hooks)  # the trials stand still for this
    round_end = sum(wall["mlflow.round_end"])
    # CPU that competes with training: the driver thread in the hooks (and the round-end
    # flush) plus the writer thread. In "sync" the driver's hook time is mostly waiting
    # for the writer, so only its CPU is added, not its wall.
    hook_cpu = sum(sum(cpu[k]) for k in (*hooks, "mlflow.round_end"))
    mlflow_cpu = hook_cpu + w["cpu_s"]
    store_total = sum(sum(wall[k]) for k in ("store.start", "store.result", "store.complete"))
    runs, finished, steps, linked = c["check"]
    ok = runs == finished == linked == c["trials"] and steps == n and not w["dropped"]
    split = " / ".join(f"{1e3 * statistics.mean(wall[f'store.{k}']):.2f}"
                       if wall.get(f"store.{k}") else "—"
                       for k in ("record", "update_job"))
    row = [label, MODES[mode], n, 1e3 * epoch_total / len(c["epoch"]),
           1e3 * statistics.mean(wall["mlflow.result"]),
           1e3 * percentile(wall["mlflow.result"], 95), 1e3 * round_end,
           100 * waited / epoch_total, 1e3 * w["cpu_s"] / n, w["calls"] / n,
           100 * mlflow_cpu / epoch_total, 1e3 * statistics.mean(wall["store.result"]), split,
           100 * store_total / epoch_total,
           f"{runs} runs, {finished} FINISHED, {steps} steps, {linked} linked, "
           f"{w['dropped']} dropped" + ("" if ok else " (MISMATCH)")]
    return row, waited / epoch_total, mlflow_cpu / epoch_total


def _run(quick: bool, out_dir: Path, scratch: Path) -> dict[str, Any]:
    notes: list[str] = []
    cost_rows = []
    shares: list[tuple[str, float, float]] = []
    per_run: dict[str, tuple[dict[str, float], float]] = {}  # ms per trial: by call, training
    trials = 3 if quick else 6
    for label, workload in WORKLOADS.items():
        if quick and workload.get("model"):
            continue  # --quick: the demo workload only
        n = 2 if workload.get("model") else trials
        for mode in MODES:  # side by side, same configs (seeded sampler)
            c = measure_cost(workload, n, scratch / "cost" / str(len(cost_rows)), mode)
            row, wait_share, cpu_share = _cost_row(label, mode, c)
            cost_rows.append(row)
            if mode == "background":
                shares.append((label, wait_share, cpu_share))
            if mode != "sync":  # the writer's CPU per trial, by call
                per_run[f"{label}, {mode}"] = (
                    {k: 1e3 * v / n for k, v in c["writer"]["by_call"].items()},
                    1e3 * sum(c["epoch"]) / n)
    notes.append("'Trial waits' in the background rows: every hook only enqueues; neither a "
                 "checkpoint nor a trial's completion waits for MLflow (a driver that takes "
                 "over a killed one copies what MLflow lacks from the job store: "
                 "workers/tune/backfill.py). The writer's work is done in the background, "
                 "where here it shares this process, and its GIL, with the training (the "
                 "epoch column), and at the round's end (the driver waits at round end).")
    share_ok = all(cpu <= GOAL_SHARE for _, _, cpu in shares)
    for label, wait, cpu in shares:
        notes.append(f"{label}, background writer: trials wait {100 * wait:.2f}% of epoch "
                     f"time for MLflow; MLflow CPU {100 * cpu:.2f}% of epoch time (goal "
                     f"≤ {GOAL_SHARE:.0%}: {'met' if cpu <= GOAL_SHARE else 'not met'}).")
    conc_rows = []
    locked_total = 0
    if quick:
        scenarios = [(4, "init", 2.0), (4, "wal_bulk", 2.0)]
    else:  # repeats interleaved, so load from elsewhere on the machine hits each alike
        scenarios = [(1, "init", 4.0), (1, "wal", 4.0), (1, "wal_normal", 4.0),
                     (1, "wal_bulk", 4.0)] * 2
        scenarios += [(8, "init", 5.0), (8, "wal", 5.0), (8, "wal_bulk", 5.0)] * 2
        scenarios += [(8, "fresh", 5.0)]
    writers = Writers(max(n for n, _, _ in scenarios))
    try:
        for i, (n, store, seconds) in enumerate(scenarios):
            r = concurrency(writers, n, seconds, scratch, store, f"{i}-{n}-{store}")
            locked_total += r["locked"]
            conc_rows.append([n, STORES[store], seconds, r["batches"], r["batches"] / seconds,
                              r["runs"], r["p50"], r["p99"], r["locked"],
                              "; ".join(e[:110] for e in r["errors"][:2]) if r["errors"]
                              else "none"])
    finally:
        writers.close()
    from bench import b6_bulk

    bulk = b6_bulk.measure(scratch / "bulk", runs=8 if quick else 16, rounds=2 if quick else 3)
    tables = [
        {"caption": "Cost per trial: the driver's callbacks driven with real epochs, MLflow "
                    "written synchronously (before), by the background writer through "
                    "MLflow's client (before) and in bulk SQL (now), side by side on "
                    "the same configs. 'Trial waits' = wall time of the MLflow "
                    "hooks in the driver thread (every trial stands still meanwhile); "
                    "'CPU' = driver-thread CPU in the hooks and round-end flush + the "
                    "writer thread's CPU (it competes with training for the cores); shares "
                    "are ÷ epoch compute",
         "columns": ["workload", "MLflow", "results", "epoch (ms)",
                     "trial waits for MLflow per result (ms)", "p95 (ms)",
                     "driver waits at round end (ms)", "trial waits % of epoch time",
                     "writer CPU per result (ms)", "MLflow calls per result",
                     "MLflow CPU % of epoch time", "store per result (ms)",
                     "store: record / update_job (ms per call)",
                     "store share %", "check"],
         "rows": cost_rows},
        {"caption": "One child run (its tags, 13 params, 10 epochs × 18 metric values, "
                    "then FINISHED) through MLflow's client vs the bulk path, on one SQLite "
                    "MLflow store (WAL), interleaved rounds; CPU of the writing thread",
         "columns": ["path", "metric values per run", "runs per round",
                     "CPU per run, each round (ms)", "median CPU per run (ms)",
                     "client ÷ this", "check"],
         "rows": b6_bulk.rows(bulk)},
        {"caption": "N processes logging to one SQLite MLflow store at once (create_run + 13 "
                    "params, a batch of 18 metrics in a loop, a new run every 10 batches — "
                    "through MLflow's client, or the bulk path in the wal_bulk rows); 1 "
                    "process = the latency "
                    "of one writer",
         "columns": ["processes", "store", "seconds", "metric batches", "batches/s", "runs",
                     "p50 (ms)", "p99 (ms)", "'database is locked'", "errors"],
         "rows": conc_rows},
    ]
    if not quick:
        notes.append("Scenarios ran in the order listed; the 1- and 8-writer comparisons "
                     "twice each, interleaved.")
    notes += [
        f"Goal: MLflow logging ≤ {GOAL_SHARE:.0%} of trial time; no 'database is locked' with "
        "N concurrent writers.",
        "Tune's function trainables report synchronously: the trial thread waits at "
        "tune.report until the driver has processed the result, callbacks included. So the "
        "per-result callback time (MLflow + store, plus the round trip) is added to every "
        "epoch of every trial, and with several trials the driver serialises them.",
        "Now the MLflow hooks only enqueue; one writer thread in the driver makes each run "
        "at once (the job store wants its id), then writes all pending epochs of a run at "
        "most once per second. Where the tracking URI is a SQLite or PostgreSQL store with "
        "the tables it knows, it writes straight into MLflow's tables "
        "(workers/tune/mlflow_bulk.py; the rows MLflow's own calls would write): one "
        "transaction makes a run with its tags and params, one per round writes the metric "
        "values, tags and ends of every run with something pending. Otherwise (an MLflow server, REGTUNE_MLFLOW_BULK_METRICS=0, "
        "the 'through MLflow's client' rows) it calls create_run, log_batch (1000 values, "
        "100 params / 100 tags per call) and set_terminated. It is flushed when Tune ends "
        "the round (on_experiment_end).",
        "Which share is the goal judged on: the CPU share (last MLflow column), not the "
        "wait. The wait is what the trials stand still for; the CPU share is what the "
        "writer still takes from the 2 cores that train. In this benchmark the writer "
        "thread shares the process (and the GIL) with the training thread; in a deployment "
        "it runs in the driver process, apart from the trials.",
        "The writer's CPU per trial, by call (ms): " + "; ".join(
            f"{label}: " + ", ".join(f"{k} {v:.2f}" for k, v in calls.items())
            + f" (all {sum(calls.values()):.2f}, against {train:.0f} ms of training: "
            f"{100 * sum(calls.values()) / train:.1f}%)"
            for label, (calls, train) in per_run.items())
        + ". search_runs is the writer's one look for runs a driver it takes over from "
        "made; the rest is per run.",
        b6_bulk.floor_note(bulk, per_run),
        "The hooks' wait is not zero in the background mode: the writer thread holds the GIL "
        "while MLflow's ORM runs, and the driver thread waits for it (up to the 5 ms switch "
        "interval per acquisition, more on a loaded machine). Here training shares that "
        "process too, which makes it worse than in a deployment, where trials train in "
        "their own processes and the driver thread mostly waits on Ray.",
        "'check': child runs made, runs FINISHED, objective steps in MLflow (one per "
        "result), trials in the job store that carry their MLflow run id, operations the "
        "writer dropped.",
        "Cost measured in one process. The concurrency test starts its writer processes "
        "once (MLflow imported), then runs each scenario with N of them starting at the same "
        "instant on a store of its own.",
        "MLflow's SQLite store, left to itself, runs in SQLite's default rollback-journal "
        "mode with synchronous=FULL, and each log_batch commits twice (metrics, then "
        "latest_metrics): several fsyncs per epoch per trial. The 'wal' rows set PRAGMA "
        "journal_mode=WAL on the file once after creating it (it persists in the file), "
        "which is what the service's init_mlflow does at start; 'wal_normal' also sets "
        "synchronous=NORMAL on each connection (a SQLAlchemy connect listener), as the job "
        "store does, which the service does not apply to MLflow's store.",
        "The store's per-result cost stays in the driver thread (the API serves it live): "
        "one store.record call per result writes the trial rows of the result (one, or "
        "a population's K members) and their events in one BEGIN IMMEDIATE transaction, "
        "and update_job follows when the best changes.",
    ]
    return {"id": "B6", "title": "Tracking: MLflow cost per trial and SQLite under concurrency",
            "command": command_for("B6", quick), "tables": tables, "plots": [],
            "notes": notes,
            "goal": f"MLflow logging ≤ {GOAL_SHARE:.0%} of trial time; never 'database is "
                    "locked' with concurrent writers",
            "met": bool(share_ok and locked_total == 0),
            "met_detail": _detail(shares, locked_total)}


def _detail(shares: list[tuple[str, float, float]], locked: int) -> str:
    """Both readings of the goal: the CPU share (judged) and what the trials wait."""
    def reading(index: int) -> str:
        ok = all(share[index] <= GOAL_SHARE for share in shares)
        return ("yes" if ok else "no") + " (" + ", ".join(
            f"{100 * share[index]:.2f}% {share[0].split(' (')[0]}" for share in shares) + ")"

    return (f"MLflow CPU share: {reading(2)}; trial waits: {reading(1)}; "
            f"'database is locked': {locked}")


if __name__ == "__main__":
    print("usage: python -m bench --only B6 (this module's own entry point is internal)",
          file=sys.stderr)
    sys.exit(2)
