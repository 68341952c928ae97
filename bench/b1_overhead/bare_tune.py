"""(b) bare Ray Tune: ``run_bare`` starts ``python -m bench.b1_overhead bare``, which runs
the variants (Tune on the same trainable, and the driver in-process) one after another
on a fresh local Ray with 2 CPUs, then probes a fresh actor's start-up."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.b1_overhead.service_mode import RAY_AGENT_PORT
from bench.b1_overhead.tune_driver import _time_callback_classes, run_driver_variant
from bench.b1_overhead.workload import SLOTS
from bench.common import (COMPUTE_LOG_ENV, PY, REPO, free_port, read_compute_log,
                          repo_env)


# --- (b) bare Ray Tune, in a subprocess with its own local Ray -------------------------------


def minimal_trial(config: dict[str, Any], spec_json: dict[str, Any]) -> None:
    """The same Trainer work as ``train_trial``, reporting each epoch, no checkpoint."""
    from ray import tune

    from search_spaces import SearchSpec
    from workers.training import Trainer, build_setup

    spec = SearchSpec.model_validate(spec_json)
    trainer = Trainer(build_setup(spec, spec.resolve_params(config)), "cpu")
    while not trainer.done:
        tune.report(trainer.train_epoch())


def run_variant(name: str, spec_json: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """One variant's run, with the CPU time this process (Tune's loop, the driver's
    callbacks and threads; not the trials, which are Ray workers) spent on it."""
    cpu0 = time.process_time()
    out = _run_variant(name, spec_json, scratch)
    out["cpu_s"] = time.process_time() - cpu0
    return out


def _run_variant(name: str, spec_json: dict[str, Any], scratch: Path) -> dict[str, Any]:
    from ray import tune

    from search_spaces import SearchSpec
    from workers.tune.trainable import train_trial

    if name.startswith("driver"):
        return run_driver_variant(name, spec_json)
    spec = SearchSpec.model_validate(spec_json)
    lams = spec.grid_axes()["reg_lambda"]
    fn = minimal_trial if name == "bare_min_reuse" else train_trial
    trainable = tune.with_resources(tune.with_parameters(fn, spec_json=spec_json), {"cpu": 1})
    tuner = tune.Tuner(
        trainable, param_space={"reg_lambda": tune.grid_search(lams)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max",
                                    max_concurrent_trials=SLOTS, reuse_actors=name != "bare"),
        run_config=tune.RunConfig(name=name, storage_path=str(scratch / f"results-{name}"),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=0))
    t0 = time.time()
    grid = tuner.fit()
    t1 = time.time()
    return {"mode": name, "start": t0, "end": t1, "wall": t1 - t0, "trials": len(grid),
            "errors": sum(1 for r in grid if r.error is not None),
            "reuse_actors": name != "bare", "timings": {}}


_TIMED = [False]


def probe_actor_start(spec_json: dict[str, Any], n: int = 2) -> dict[str, float]:
    """Fresh Ray actors: create → ready, and a trial's start inside a fresh worker: its
    imports, its data and its Trainer (model and optimizer), as ``train_trial`` makes it."""
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def ready(self) -> int:
            return os.getpid()

        def imports(self) -> float:
            s = time.perf_counter()
            from search_spaces import SearchSpec
            from workers.training import Trainer, build_setup
            from workers.tune.trainable import prepare_worker

            spec = SearchSpec.model_validate(spec_json)
            Trainer(build_setup(spec, spec.resolve_params({})), prepare_worker(spec))
            return time.perf_counter() - s

    starts, imports = [], []
    for _ in range(n):
        s = time.perf_counter()
        actor = Probe.remote()
        ray.get(actor.ready.remote())
        starts.append(time.perf_counter() - s)
        imports.append(ray.get(actor.imports.remote()))
        ray.kill(actor)
        time.sleep(0.5)
    return {"actor_start_s": statistics.median(starts),
            "trial_imports_s": statistics.median(imports)}


def _agent_off_default_port() -> None:
    """Start this script's Ray with its dashboard agent on a free port, not 52365.

    Only one Ray on a machine can have its agent on the default port, and a head
    whose agent could not bind it accepts no jobs: the service's (started next) or a
    colleague's test cluster. ray.init() has no parameter for it, so the default of
    Ray's private RayParams is replaced; if that API moved, Ray's default stays.
    """
    try:
        from ray._private import parameter
    except ImportError:
        return
    original = parameter.RayParams.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if getattr(self, "dashboard_agent_listen_port", None) == RAY_AGENT_PORT:
            self.dashboard_agent_listen_port = free_port()

    parameter.RayParams.__init__ = init


def start_local_ray(scratch: Path, stores: bool = True) -> float:
    """This process as a driver host: a fresh local Ray with SLOTS CPUs; returns init seconds.

    The stores the in-process driver uses are named in the environment (it reads
    them there, as the real driver does): the job store, MLflow (SQLite) and Tune's
    results under ``scratch/driver-data``. With ``stores`` MLflow's tables are
    created first, as the service does when it starts (``init_mlflow``), not per job.
    Ray's dashboard agent goes to a free port (see ``_agent_off_default_port``).
    """
    import logging

    data = scratch / "driver-data"
    os.environ.update({"REGTUNE_DATA_DIR": str(data),
                       "REGTUNE_STORAGE_PATH": str(data / "ray_results")})
    if stores:
        from service.app import init_mlflow
        from service.settings import get_settings

        init_mlflow(get_settings().mlflow_uri)
    import ray

    _agent_off_default_port()
    logging.getLogger("ray").setLevel(logging.WARNING)
    s = time.perf_counter()
    ray.init(address="local", num_cpus=SLOTS, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(scratch / "ray"))
    return time.perf_counter() - s


def warm_up_spec(spec_json: dict[str, Any]) -> dict[str, Any]:
    """The same spec cut to 2 trials of 1 epoch."""
    spec = json.loads(json.dumps(spec_json))
    spec["train"]["epochs"] = 1
    spec["space"]["reg_lambda"]["choices"] = spec["space"]["reg_lambda"]["choices"][:2]
    spec["search"]["num_trials"] = 2
    return spec


def bare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b1_overhead bare")
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--variants", required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args(argv)
    spec_json = json.loads(args.spec.read_text())
    ray_init_s = start_local_ray(args.scratch, stores=any(
        v.startswith("driver") for v in args.variants.split(",")))
    out: dict[str, Any] = {"ray_init_s": ray_init_s, "runs": []}
    for name in args.variants.split(","):
        time.sleep(1.0)  # let the previous run's actors exit
        if name.startswith("driver") and not _TIMED[0]:
            _time_callback_classes()
            _TIMED[0] = True
            # Untimed: the first driver job in this process pays its imports (MLflow's
            # bulk path, the stores, the driver's modules), which no later one does.
            run_variant("driver", warm_up_spec(spec_json), args.scratch)
            time.sleep(2.0)  # its epochs stay outside the next run's window
        out["runs"].append(run_variant(name, spec_json, args.scratch))
        args.out.write_text(json.dumps(out))
    if args.probe:
        out["probe"] = probe_actor_start(spec_json)
    args.out.write_text(json.dumps(out))
    import ray

    ray.shutdown()
    return 0


def run_bare(spec_json: dict[str, Any], variants: tuple[str, ...], hook_dir: Path,
             scratch: Path, probe: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    log_path = scratch / "compute-bare.jsonl"
    spec_path = scratch / "spec.json"
    spec_path.write_text(json.dumps(spec_json))
    out_path = scratch / "bare.json"
    env = repo_env({COMPUTE_LOG_ENV: str(log_path), "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"},
                   prepend_path=str(hook_dir))
    with open(scratch / "bare.log", "wb") as log:
        proc = subprocess.run([PY, "-m", "bench.b1_overhead", "bare", "--spec", str(spec_path),
                               "--variants", ",".join(variants), "--scratch", str(scratch),
                               "--out", str(out_path)] + (["--probe"] if probe else []),
                              env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, timeout=1500)
    if proc.returncode != 0:
        tail = (scratch / "bare.log").read_text()[-3000:]
        raise RuntimeError(f"the bare Ray Tune run failed ({proc.returncode}): {tail}")
    return json.loads(out_path.read_text()), read_compute_log(log_path)
