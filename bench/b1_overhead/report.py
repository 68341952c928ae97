"""``run``: B1's modes one after another (calibration and the pool floor, bare Ray Tune and
its variants, the service), then the result: tables, notes, plot and whether the goal
was met."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.b1_overhead.analysis import _trial_startup, analyse, plot_timeline, service_phases
from bench.b1_overhead.bare_tune import run_bare
from bench.b1_overhead.profiling import DriverProfiler, measure_driver_imports
from bench.b1_overhead.service_mode import RAY_AGENT_PORT, run_service
from bench.b1_overhead.workload import (FULL_VARIANTS, GOAL_ETA, QUICK_VARIANTS, SLOTS, VARIANTS,
                                         b1_spec, calibrate_and_pool)
from bench.common import command_for, fmt, install_compute_hook, run_in_scratch


def _say(message: str, since: float) -> None:
    print(f"[bench]   {message} (+{time.monotonic() - since:.0f} s)", file=sys.stderr, flush=True)


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    return run_in_scratch("b1", _run, quick, out_dir)


def _run(quick: bool, out_dir: Path, scratch: Path) -> dict[str, Any]:
    n_trials = 4 if quick else 16
    target = 1.0 if quick else 2.0
    variants = QUICK_VARIANTS if quick else FULL_VARIANTS
    hook = install_compute_hook(scratch / "hook")
    notes: list[str] = []

    t = time.monotonic()
    epochs, epoch_s, pool = calibrate_and_pool(n_trials, target)
    _say(f"B1 pool done: {epochs} epochs/trial, wall {pool['wall']:.1f} s", t)
    spec = b1_spec(n_trials, epochs)
    bare_out, bare_records = run_bare(spec, variants, hook, scratch, probe=not quick)
    _say("B1 bare Ray Tune variants done: " + ", ".join(
        f"{r['mode']} {r['wall']:.1f} s" for r in bare_out["runs"]), t)
    # --quick leaves py-spy out: stopping it took 4 s of a quick run, and it loads the cores.
    service, service_records = run_service(spec, hook, scratch, profile=not quick)
    _say(f"B1 service done: wall {service['wall']:.1f} s", t)
    cold, cold_records = run_service(spec, hook, scratch, profile=False, standby=False)
    _say(f"B1 service without a standby driver done: wall {cold['wall']:.1f} s", t)
    imports = {} if quick else measure_driver_imports()

    modes: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = [
        ("service", "(a) the service end to end (REST submit → /best)", service,
         service_records),
        ("service-cold", "(a) the same with no standby driver (REGTUNE_STANDBY_DRIVERS=0: "
                         "the job's driver starts at submit)", cold, cold_records)]
    for r in bare_out["runs"]:
        label = VARIANTS[r["mode"]]
        if r["mode"].startswith("driver"):
            label += (f" [reuse_actors={r.get('reuse_actors')}, TUNE_GLOBAL_CHECKPOINT_S="
                      f"{r.get('global_checkpoint_s')}, REGTUNE_CHECKPOINT_INTERVAL_S="
                      f"{r.get('checkpoint_interval_s')}]")
        modes.append((r["mode"], f"(b) {label}", r, bare_records))
    modes.append(("pool", "(c) floor: multiprocessing pool of 2", pool, pool["records"]))

    stats = {key: analyse(run_, recs) for key, _, run_, recs in modes}
    bare_wall = next(r["wall"] for r in bare_out["runs"] if r["mode"] == "bare")
    expected_epochs = n_trials * epochs
    main_rows, split_rows = [], []
    for key, label, run_, _ in modes:
        s = stats[key]
        per_trial_overhead = (SLOTS * run_["wall"] - s["compute"]) / n_trials
        main_rows.append([label, s["trials_seen"], s["epochs"], run_["wall"], s["compute"],
                          s["epoch_ms"], s["eta"], run_["wall"] / bare_wall, per_trial_overhead,
                          s["eta_steady"], run_["wall"] - s["steady"],
                          run_["cpu_s"] if "cpu_s" in run_ else "—"])
        slot = SLOTS * run_["wall"]
        split_rows.append([label, 100 * s["compute"] / slot, 100 * s["gaps"] / slot,
                           100 * s["rest"] / slot])
        if s["epochs"] != expected_epochs:
            notes.append(f"{key}: the compute hook saw {s['epochs']} epochs, expected "
                         f"{expected_epochs} ({n_trials}×{epochs}); η counts what it saw.")
    for r in bare_out["runs"]:
        if r.get("errors"):
            notes.append(f"{r['mode']}: {r['errors']} trial(s) ended in an error.")
    if service.get("completed") != n_trials:
        notes.append(f"service: {service.get('completed')} of {n_trials} trials completed.")

    eta_service = stats["service"]["eta"]
    ratio = service["wall"] / bare_wall
    fastest = min(bare_out["runs"], key=lambda r: r["wall"])
    notes.append(f"Fastest Ray Tune variant: {fastest['mode']} ({fastest['wall']:.1f} s); "
                 f"service ÷ it = {service['wall'] / fastest['wall']:.2f}.")
    notes.append("Tune driver process CPU: time.process_time() of the (b) subprocess over "
                 "each run: Tune's loop, its experiment snapshots, the driver's callbacks and "
                 "threads (and, for the driver rows, the MLflow parent run and the figures "
                 "logged after the answer); the trials run in Ray workers, not counted. "
                 "Before the first driver row, an untimed driver job (2 trials × 1 epoch) "
                 "ran in the same process, so no row pays the first job's imports.")
    met = bool(eta_service >= GOAL_ETA and ratio <= 1.0)

    tables = [
        {"caption": f"{n_trials} trials × {epochs} epochs of the digits MLP 2×768 on {SLOTS} "
                    f"slots (calibrated: fastest epoch {epoch_s * 1e3:.0f} ms on one core → "
                    f"≈{epochs * epoch_s:.1f} s of training per trial). η = Σ compute ÷ "
                    f"({SLOTS} × wall); compute = time inside Trainer.train_epoch, "
                    "measured in the trial processes",
         "columns": ["mode", "trials", "epochs", "wall (s)", "Σ compute (s)",
                     "mean epoch (ms)", "η", "wall ÷ bare", "overhead per trial (s)",
                     "η from first to last epoch", "wall outside that window (s)",
                     "Tune driver process CPU (s)"],
         "rows": main_rows},
        {"caption": "Where the slot-time (2 × wall) goes: training; gaps between epochs "
                    "of a trial (report, per-epoch checkpoint, waiting while the driver runs "
                    "its callbacks); the rest (process/actor start, imports, data loading, "
                    "job start-up and tear-down, idle slots)",
         "columns": ["mode", "training %", "between epochs %", "start-up, tear-down, idle %"],
         "rows": split_rows},
        {"caption": "The service's timeline for this job (its event log, the compute log and "
                    "the client's clock), with its standby driver and without one",
         "columns": ["milestone", "at (s)", "since previous (s)", "no standby: at (s)",
                     "no standby: since previous (s)"],
         "rows": [row + cold_row[1:] for row, cold_row in
                  zip(service_phases(service, service_records),
                      service_phases(cold, cold_records))]},
    ]

    profile_rows: list[list[Any]] = []
    probe = bare_out.get("probe", {})
    profile_rows.append(["ray.init(num_cpus=2) of the bare script (excluded from its wall)",
                         bare_out["ray_init_s"], "once per script"])
    profile_rows.append(["service start (regtune serve → /readyz 200; excluded)",
                         service.get("service_start_s"), "once per service"])
    profile_rows.append(["service: /readyz 200 → its Ray head accepts and runs a no-op job "
                         f"({service.get('ray_refusals')} refusals; excluded)",
                         service.get("ray_jobs_ready_s"), "once per service"])
    profile_rows.append(["service: then its standby driver says it is ready (excluded; the "
                         "no-standby row submits right after the no-op job)",
                         service.get("standby_ready_s"), "once per service"])
    if service.get("agent_ports_moved"):
        notes.append(f"Another Ray cluster on the machine held port {RAY_AGENT_PORT} (Ray's "
                     "default dashboard-agent port) for 30 s, so the service ran with its Ray "
                     "head's agent ports moved to free ports (LocalRayHead.command "
                     "monkeypatched, the change proposed for service/launcher/local_head.py); "
                     "as it is, the service's head would refuse every job.")
    elif service.get("agent_port_wait_s", 0) > 0.5:
        notes.append(f"Before starting the service, the benchmark waited "
                     f"{service['agent_port_wait_s']:.1f} s for port {RAY_AGENT_PORT} to be "
                     "free: Ray's dashboard agent always listens there, so a second Ray head "
                     "on the machine (here the bare-Tune run's, still shutting down, or "
                     "another user's) leaves the service's head without a job agent.")
    if service.get("ray_refusals"):
        notes.append(f"After /readyz answered 200 the service's Ray head refused "
                     f"{service['ray_refusals']} job submissions with 500 'No available agent "
                     "to submit job' (its job agent was not up yet). A job submitted then fails "
                     "at once ('could not launch'); the benchmark waits for the head to accept "
                     "a no-op job before the timed submit.")
    if probe:
        profile_rows.append(["a fresh Ray actor: create → first call returns",
                             probe["actor_start_s"], "per trial when reuse_actors=False"])
        profile_rows.append(["a trial's start in a fresh worker: imports (torch, "
                             "workers.training, the trainable), data, its Trainer (model, "
                             "optimizer)", probe["trial_imports_s"],
                             "per trial when reuse_actors=False"])
    startup = _trial_startup(service, service_records)
    if startup is not None:
        profile_rows.append(["service: trial_started → its first epoch begins (actor start, "
                             "imports, data, model)", startup, "mean per trial"])
    for key in ("service", *variants):
        if key in stats and stats[key]["epochs"]:
            per_gap = stats[key]["gaps"] / max(1, stats[key]["epochs"] - stats[key]["trials_seen"])
            profile_rows.append([f"{key}: gap between two epochs of a trial", per_gap,
                                 "mean per epoch"])
    for r in bare_out["runs"]:
        for hook_name, values in sorted(r.get("timings", {}).items()):
            if values:
                where = ("driver thread; only enqueues for the MLflow writer thread"
                         if hook_name.startswith("mlflow.")
                         else "after the job succeeded"
                         if hook_name.startswith("figures.")
                         else "driver thread; the trial waits")
                profile_rows.append([f"{r['mode']}: {hook_name} ({where})",
                                     statistics.mean(values),
                                     f"mean of {len(values)} calls, max {max(values):.3f}"])
    total_imports = sum(imports.values()) if imports else None
    if imports:
        for name, seconds in imports.items():
            profile_rows.append([f"driver import: {name}", seconds, "once per job"])
        profile_rows.append(["driver imports, total (fresh interpreter)", total_imports,
                             "once per job"])
    tables.append({"caption": "Profile: where the time goes (seconds)",
                   "columns": ["what", "seconds", "how often"], "rows": profile_rows})

    prof = service.get("profile", {})
    samples = prof.get("samples") or {}
    if samples.get("total"):
        rate = samples["rate"]
        cat_rows = [[name, count / rate, 100 * count / samples["total"]]
                    for name, count in sorted(samples["categories"].items(),
                                              key=lambda kv: -kv[1])]
        cat_rows.append(["total (driver busy, py-spy samples without --idle)",
                         samples["total"] / rate, 100.0])
        tables.append({"caption": f"The service's driver process under py-spy ({rate} Hz, "
                                  "--nonblocking, attached "
                                  f"{fmt(prof.get('found_after_s'))} s after submit): CPU "
                                  "seconds by what is on the stack",
                       "columns": ["on the stack", "CPU s", "% of samples"], "rows": cat_rows})
        own_rows = [[frame, count / rate] for frame, count in samples["own_frames"]]
        if own_rows:
            tables.append({"caption": "Driver: innermost regtune frame of each sample (top 8)",
                           "columns": ["frame", "CPU s"], "rows": own_rows})
    elif prof:
        notes.append(f"py-spy on the driver gave no samples: {prof.get('error')}")

    plots = []
    timeline = plot_timeline([(key, run_, recs) for key, _, run_, recs in modes], out_dir)
    if timeline:
        plots.append(timeline)

    notes += [
        f"Ratios: service ÷ bare wall = {ratio:.2f}; goal η ≥ {GOAL_ETA} for the service and "
        f"service wall ≤ bare wall. Ray's own release test accepts η ≥ 0.78.",
        "Two efficiencies: η over the whole wall (the goal), and η from the first epoch "
        "to the last one in any trial, which leaves out the per-job fixed cost (driver start, "
        "first actors, tear-down) and keeps the per-trial and per-epoch costs.",
        "Walls: the service from POST /v1/jobs to /best answered (its Ray head and API were "
        "already up, and in the first service row its standby driver had started and said "
        "it was ready, as on a service up for a few seconds: service.launcher.standby; the "
        "second row is the same service with REGTUNE_STANDBY_DRIVERS=0); bare Ray Tune from Tuner.fit() call to return (its ray.init excluded); "
        "the pool from the first task submitted to the last result (workers started and "
        "warm, imports done).",
        "All modes train the same configs (a grid of λ values, scheduler none) with one "
        "thread per trial. Modes ran one after another in this run, so load from other "
        "processes on the machine can differ between them; the mean epoch time column "
        "shows how much the training itself was slowed.",
        "The compute hook is a sitecustomize module on PYTHONPATH that wraps "
        "Trainer.train_epoch in every Python process of the run (service, Ray head and "
        "workers); the code under test is not modified.",
        (f"The driver was sampled by py-spy at {DriverProfiler.RATE} Hz with --nonblocking "
         "while the timed job ran (a small extra load on the 2 cores)." if not quick else
         "--quick: the driver is not sampled by py-spy (the full run is)."),
    ]
    return {"id": "B1", "title": "Overhead: the service vs bare Ray Tune vs a process pool",
            "command": command_for("B1", quick), "tables": tables, "plots": plots,
            "notes": notes,
            "goal": f"η ≥ {GOAL_ETA} for ≈2 s trials on 2 CPUs, and the service no slower "
                    "than bare Ray Tune",
            "met": met}
