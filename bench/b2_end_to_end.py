"""B2 end to end: the same trials through the real Tune driver, one per Tune trial or
as populations of K.

B2's kernel rows compare training loops in two plain processes. In this service
"one trial per worker" means each trial is its own Ray Tune trial in a Ray worker,
with the driver's reports, checkpoints, job-store records and MLflow runs; this
part measures that. ``workers.tune.driver.run()`` runs in-process, as B1's driver
variants do (``bench.b1_overhead.tune_driver.run_driver_variant``): no service and
no job submission, a local Ray with 2 CPUs started beforehand by the bench, the job
store, MLflow (SQLite) and Tune's results under a scratch directory. Two modes, on
the same Ray, one after the other:

* ``per_trial``: ``search.population`` 1, N trials, 2 concurrent Tune trials;
* ``population``: ``search.population`` K, the same N = 2 × K trials, 2 concurrent
  populations (so both CPUs train, as in the per-trial mode).

Both sample B2's kind of trials (digits, MLP [64], batch 128, SGD; λ, l1_ratio,
start step, ramp, lr, momentum, loss and γ vary) with the random sampler, no early
stopping. In full mode a small job runs first, untimed, so that the driver's lazy
imports, the first Ray workers and the first figures are not charged to the first
mode. ``--quick`` skips it to save time and runs the population mode first instead,
so those first-run costs fall on the population mode (its ratio is then on the low
side).

``python -m bench.b2_end_to_end [--quick]`` prints the result of this part alone;
``... --scratch DIR --out FILE`` is the subprocess that owns the Ray (internal).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from datetime import timezone
from pathlib import Path
from typing import Any

from bench.common import PY, REPO, repo_env, run_in_scratch

SLOTS = 2
#: (trials N of each mode, K) per mode of the bench; N = 2·K: two populations, one per CPU.
SIZES = {"full": (128, 64), "quick": (8, 4)}
WARMUP_TRIALS = 2
SEED = 7
TRAIN_SIZE = 1437  # digits' train split (B2's make_setups counts steps the same way)


def e2e_spec(name: str, trials: int, population: int, epochs: int) -> dict[str, Any]:
    """B2's SPEC with its kind of sampled space, as a job the driver accepts."""
    from bench.b2_population import SPEC

    steps = epochs * math.ceil(TRAIN_SIZE / SPEC["train"]["batch_size"])
    return {
        **SPEC, "name": name,
        "train": {**SPEC["train"], "epochs": epochs},
        "space": {
            "reg_lambda": {"low": 1e-5, "high": 1e-2, "log": True},
            "l1_ratio": {"low": 0.0, "high": 1.0},
            "reg_start_step": {"low": 0, "high": steps // 2, "type": "int"},
            "reg_ramp_steps": {"low": 0, "high": 19, "type": "int"},
            "lr": {"low": 10 ** -1.7, "high": 10 ** -0.7, "log": True},
            "momentum": {"low": 0.5, "high": 0.95},
            "loss": {"choices": ["cross_entropy", "focal"]},
            "focal_gamma": {"low": 0.5, "high": 3.0},  # sampled for focal members only
        },
        "search": {"algorithm": "random", "num_trials": trials, "max_concurrent": SLOTS,
                   "scheduler": "none", "seed": SEED, "population": population},
        "resources": {"cpu": 1, "gpu": 0},
    }


def plan(quick: bool) -> list[tuple[str, dict[str, Any]]]:
    """(mode, spec) in the order they run: full mode warms up first, quick does not."""
    n, k = SIZES["quick" if quick else "full"]
    epochs = 3 if quick else 10  # as the kernel rows
    per_trial = ("per_trial", e2e_spec("b2-e2e-per-trial", n, 1, epochs))
    population = ("population", e2e_spec(f"b2-e2e-population-{k}", n, k, epochs))
    if quick:
        return [population, per_trial]
    return [("warmup", e2e_spec("b2-e2e-warmup", WARMUP_TRIALS, 1, 1)), per_trial, population]


# --- the subprocess: a local Ray, then the driver once per mode -----------------------------


def phases(start: float, end: float, events: list[Any]) -> dict[str, float]:
    """Seconds from the driver call to the first trial result, from there to the last
    trial's end, and from there to the driver's return (the job's events' times)."""

    def at(event: Any) -> float:
        when = event.created_at
        if when.tzinfo is None:  # SQLite hands the store's UTC times back naive
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()

    results = [at(e) for e in events if e.kind == "trial_result"]
    ends = [at(e) for e in events if e.kind in ("trial_completed", "trial_stopped",
                                                 "trial_failed")]
    answered = [at(e) for e in events if e.kind == "job_succeeded"]
    if not results or not ends:
        return {}
    out = {"to_first_result": min(results) - start, "training": max(ends) - min(results),
           "after_last_trial": end - max(ends)}
    if answered:
        out.update(answered=answered[0] - start, to_answer=answered[0] - max(ends),
                   after_answer=end - answered[0])
    return out


def check_job(run: dict[str, Any]) -> dict[str, Any]:
    """What the job store and MLflow hold for the job just run."""
    from mlflow.tracking import MlflowClient

    from service.settings import get_settings
    from service.store import open_store

    settings = get_settings()
    store = open_store(settings.database)
    trials = store.list_trials(run["job_id"])
    events, seq = [], 0
    while page := store.events_since(run["job_id"], seq, 5000):
        events += page
        seq = page[-1].seq
    store.close()
    ids = {t.trial_id for t in trials}
    # A population member's id is "<tune trial id>-m<i>" (workers.tune.population.member_id).
    tune_ids = {t.trial_id.rsplit("-m", 1)[0] if "-m" in t.trial_id else t.trial_id
                for t in trials}
    runs = []
    if run.get("mlflow_experiment_id") and run.get("mlflow_parent_run_id"):
        runs = MlflowClient(tracking_uri=settings.mlflow_uri).search_runs(
            [run["mlflow_experiment_id"]], max_results=max(1000, 2 * len(ids)),
            filter_string=f"tags.`mlflow.parentRunId` = '{run['mlflow_parent_run_id']}'")
    run_ids = {r.data.tags.get("regtune.trial_id") for r in runs}
    return {"phases": phases(run["start"], run["end"], events),
            "completed": sum(1 for t in trials if t.status == "completed"),
            "tune_trials": len(tune_ids), "child_runs": len(runs),
            "child_runs_finished": sum(1 for r in runs if r.info.status == "FINISHED"),
            "runs_match_trials": run_ids == ids}


def e2e_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b2_end_to_end")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from bench.b1_overhead.bare_tune import start_local_ray
    from bench.b1_overhead.tune_driver import _time_callback_classes, run_driver_variant

    out: dict[str, Any] = {"ray_init_s": start_local_ray(args.scratch), "runs": []}
    _time_callback_classes()  # perf_counter around the driver's hooks, for the notes
    for index, (mode, spec) in enumerate(plan(args.quick)):
        if index:
            time.sleep(1.0)  # let the previous job's actors exit
        run = run_driver_variant("driver", spec)
        run.update(check_job(run), mode=mode, planned=spec["search"]["num_trials"],
                   population=spec["search"]["population"], epochs=spec["train"]["epochs"])
        out["runs"].append(run)
        args.out.write_text(json.dumps(out))
    import ray

    ray.shutdown()
    return 0


def _measure_in(quick: bool, scratch: Path) -> dict[str, Any]:
    out_path = scratch / "e2e.json"
    command = [PY, "-m", "bench.b2_end_to_end", "--scratch", str(scratch), "--out",
               str(out_path)] + (["--quick"] if quick else [])
    start = time.perf_counter()
    with open(scratch / "e2e.log", "wb") as log:
        proc = subprocess.run(command, env=repo_env(), cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, timeout=900)
    if proc.returncode != 0 or not out_path.exists():
        tail = (scratch / "e2e.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the end-to-end driver run failed ({proc.returncode}): {tail}")
    return {**json.loads(out_path.read_text()), "total_s": time.perf_counter() - start}


def measure(quick: bool) -> dict[str, Any]:
    """Both modes in one subprocess with its own local Ray; scratch removed afterwards."""
    return run_in_scratch("b2", _measure_in, quick)


# --- the table ------------------------------------------------------------------------------


def rows(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per timed mode: trials, wall, trials/hour, × the per-trial mode, and the checks."""
    out: dict[str, dict[str, Any]] = {}
    for run in raw["runs"]:
        if run["mode"] == "warmup":
            continue
        n = run["planned"]
        timings = run.get("timings", {})
        ok = (run["status"] == "succeeded" and run["completed"] == n
              and run["child_runs"] == n and run["child_runs_finished"] == n
              and bool(run["runs_match_trials"]))
        # Wall = the driver call to the job's answer (its job_succeeded event: the job
        # store holds every trial and /best answers), as B1's service wall ends at /best.
        # The driver then logs the spec and the end-of-job figures to MLflow: in
        # "driver return s", not in trials per hour.
        wall = run.get("phases", {}).get("answered", run["wall"])
        out[run["mode"]] = {
            "K": run["population"], "trials": n, "tune_trials": run["tune_trials"],
            "epochs": run["epochs"], "wall_s": wall, "return_s": run["wall"],
            "per_hour": n / wall * 3600.0, "completed": run["completed"],
            "child_runs": run["child_runs"], "ok": ok,
            "store_s": sum(sum(v) for k, v in timings.items() if k.startswith("store.")),
            "mlflow_s": sum(sum(v) for k, v in timings.items() if k.startswith("mlflow.")),
            "figures_s": sum(timings.get("figures.log_job_figures", [])),
            "phases": run.get("phases", {}),
        }
    base = out.get("per_trial")
    for row in out.values():
        row["speedup"] = row["per_hour"] / base["per_hour"] if base else math.nan
    # In the table in the order per trial, population, whatever order they ran in.
    return {mode: out[mode] for mode in ("per_trial", "population") if mode in out}


LABELS = {"per_trial": "one trial per Tune trial", "population": "population of K per Tune trial"}
COLUMNS = ["mode", "K", "trials", "Tune trials", "wall s (to the answer)", "trials/hour",
           "× one per Tune trial", "driver return s", "completed in job store",
           "MLflow child runs", "check"]


def table(data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "caption": "End to end through the Tune driver (workers.tune.driver.run in-process, "
                   "2 CPUs): trials per hour",
        "columns": COLUMNS,
        "rows": [[LABELS[mode], r["K"] if r["K"] > 1 else "—", r["trials"], r["tune_trials"],
                  r["wall_s"], r["per_hour"], r["speedup"], r["return_s"], r["completed"],
                  r["child_runs"],
                  "ok" if r["ok"] else "FAILED"]
                 for mode, r in data.items()],
    }


def verdict(data: dict[str, dict[str, Any]], goal: float) -> tuple[bool, str]:
    """(met, text) of the end-to-end reading: the population mode against one per Tune trial."""
    pop = data.get("population")
    if pop is None or "per_trial" not in data:
        return False, "end to end through the Tune driver: not measured"
    met = pop["ok"] and data["per_trial"]["ok"] and pop["speedup"] >= goal
    return met, (f"end to end through the Tune driver: {'yes' if met else 'no'} "
                 f"({pop['speedup']:.1f}× at K={pop['K']})")


def notes(raw: dict[str, Any], data: dict[str, dict[str, Any]], goal: float,
          kernel: dict[str, dict[str, Any]]) -> list[str]:
    """The end-to-end rows' notes; ``kernel`` is the kernel rows (b2_population.summarize)."""
    order = [r["mode"] for r in raw["runs"]]
    first = ("An untimed job of {n} one-epoch trials ran first on the same Ray; then one "
             "trial per Tune trial, then the populations.".format(n=WARMUP_TRIALS)
             if order[0] == "warmup" else
             "--quick: no warm-up job, and the populations ran first, so the first-run costs "
             "(the driver's lazy imports, the first Ray workers, the first figures) fall on "
             "the population mode.")
    out = [
        "End-to-end rows: each is one call of workers.tune.driver.run(job_id) in the "
        "process of a bench subprocess, on a local Ray with 2 CPUs that the subprocess "
        f"started beforehand (ray.init took {raw['ray_init_s']:.1f} s, not counted). Wall "
        "= from the driver call to the job's answer (its job_succeeded event, when the "
        "job store holds every trial and the best one, so /best answers; B1's service "
        "wall ends at /best too): the MLflow parent run, Tune's experiment (Ray actors "
        "started and reused, reports, checkpoints, experiment snapshots), the driver's "
        "callbacks writing every trial (every member of a population) to the job store "
        "and to its MLflow child run, the MLflow writer's flush and the final "
        "selection. After the answer the driver logs the spec and the end-of-job "
        "figures to the parent run, holding no Ray CPU: in 'driver return s', not in "
        "trials per hour. Not included: job submission, the Ray job and the driver's "
        "process start-up and imports (B1 measures those). " + first + " This part "
        f"of B2 took {raw.get('total_s', math.nan):.0f} s in all (its subprocess, Ray's "
        "start, the jobs).",
    ]
    per, pop = data.get("per_trial"), data.get("population")
    if not (per and pop):
        return out
    out.append(
        f"Both modes train N = {per['trials']} trials of the kernel rows' kind "
        f"({per['epochs']} epochs, every per-member hyperparameter varying), sampled by "
        f"the random sampler (seed {SEED}), no early stopping, 2 concurrent Tune trials; "
        f"K = {pop['K']} makes {pop['tune_trials']} populations, one per CPU. check: the "
        "job succeeded, every trial is completed in the job store, and MLflow holds one "
        "finished child run per trial (per member for populations) with the same ids.")
    base = kernel.get("unbatched")
    same_k = kernel.get(f"K={pop['K']}")
    if base and same_k:
        kernel_trial = base["wall_s"] * SLOTS / base["trials"]
        kernel_pop = same_k["wall_s"] * pop["trials"] / same_k["trials"]
        direction = "lower" if pop["speedup"] < same_k["speedup_wall"] else "higher"
        out.append(
            f"Why the end-to-end ratio ({pop['speedup']:.1f}×) is {direction} than the "
            f"kernel rows' at K={pop['K']} ({same_k['speedup_wall']:.1f}×): one trial "
            f"per Tune trial costs {per['wall_s'] * SLOTS / per['trials']:.2f} core-seconds "
            f"end to end against {kernel_trial:.2f} s of training in the kernel rows. The "
            "rest is per-trial Tune overhead (an actor started or reset for reuse, a "
            "report per epoch through Ray to the driver, checkpoints after the first and "
            "last epochs with the experiment snapshot each forces) and the driver's "
            "callbacks (a job-store record and event per epoch, an MLflow child run): "
            f"{per['store_s'] + per['mlflow_s']:.1f} s of its {per['wall_s']:.1f} s. A "
            "population pays the Tune part once per K members, but the bookkeeping stays "
            "per member: each epoch the driver writes every member's record and event "
            "to the job store (one batched transaction) and queues its MLflow metrics, "
            "and its MLflow writer thread makes and fills K runs per population, written "
            "by the round's end. Those callbacks "
            f"took {pop['store_s'] + pop['mlflow_s']:.1f} s of the population mode's "
            f"{pop['wall_s']:.1f} s (job store {pop['store_s']:.1f} s, MLflow "
            f"{pop['mlflow_s']:.1f} s), one after another in the driver's loop, against "
            f"≈{kernel_pop:.1f} s of training at the kernel rows' rate; per-job costs "
            "(the parent run, actor start-up, the end-of-job figures, which took "
            f"{pop['figures_s']:.1f} s) weigh more on a job this short.")
    spans = [(LABELS[m], data[m]["phases"]) for m in data if data[m]["phases"]]
    if spans:
        out.append("Where the wall goes (times of the job's events): " + "; ".join(
            f"{label}: {p['to_first_result']:.1f} s to the first result (parent run, "
            f"Tuner, actors, first epoch), {p['training']:.1f} s from there to the last "
            f"trial's end, {p.get('to_answer', math.nan):.1f} s from there to the answer "
            f"(MLflow flush, selection), then {p.get('after_answer', math.nan):.1f} s to "
            "the driver's return (spec and figures logged)" for label, p in spans) + ".")
    if order[0] != "warmup":
        out.append(f"--quick: with N = {per['trials']} trials of {per['epochs']} epochs "
                   "each job is mostly its fixed costs (a few seconds of Tune, Ray actor "
                   "and MLflow set-up), so this ratio says little; the full run's does.")
    met, text = verdict(data, goal)
    out.append(f"Verdict, {text}: met means the population mode reaches {goal:.0f}× the "
               "trials per hour of one trial per Tune trial, with every check ok.")
    return out


if __name__ == "__main__":
    if "--scratch" in sys.argv:
        sys.exit(e2e_main(sys.argv[1:]))
    result = measure("--quick" in sys.argv)
    print(json.dumps({"raw": result, "rows": rows(result)}, indent=1, default=str))
