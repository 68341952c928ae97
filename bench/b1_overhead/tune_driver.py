"""(b), the in-process driver variants: ``workers.tune.driver.run()`` on the bare-Tune
script's own Ray, with the driver's callback hooks timed and the ``reuse_actors`` it
asks for recorded (or overridden). ``driver`` runs as the code is; the others change
one environment variable the driver reads, to show what that choice costs."""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from typing import Any


#: Durations of the driver callbacks' hooks in the current driver variant.
_TIMINGS: dict[str, list[float]] = defaultdict(list)
#: reuse_actors as the driver's build_tuner passed it (seen through the patched TuneConfig).
_SEEN_REUSE: list[Any] = []


def _time_callback_classes() -> None:
    """Time the driver's callback hooks (class-level wrappers; instances stay picklable)."""
    from workers.tune import reporting

    for cls, label in ((reporting.MlflowTrialCallback, "mlflow"),
                       (reporting.StoreTrialCallback, "store")):
        for hook in ("on_trial_start", "on_trial_result", "on_trial_complete"):
            inner = getattr(cls, hook)

            def wrapper(self: Any, *args: Any, _inner: Any = inner,
                        _key: str = f"{label}.{hook}", **kwargs: Any) -> Any:
                s = time.perf_counter()
                try:
                    return _inner(self, *args, **kwargs)
                finally:
                    _TIMINGS[_key].append(time.perf_counter() - s)

            setattr(cls, hook, wrapper)
    try:  # the end-of-job figures, when the driver has them (run() imports them late)
        from workers.tune import figures
    except ImportError:
        return
    if hasattr(figures, "log_job_figures"):
        inner_fig = figures.log_job_figures

        def log_job_figures(*args: Any, **kwargs: Any) -> Any:
            s = time.perf_counter()
            try:
                return inner_fig(*args, **kwargs)
            finally:
                _TIMINGS["figures.log_job_figures"].append(time.perf_counter() - s)

        figures.log_job_figures = log_job_figures


def _patch_tune_config(force_reuse: bool | None) -> Any:
    """Record (and optionally override) reuse_actors in the TuneConfig the driver builds."""
    import ray.tune

    original = ray.tune.TuneConfig

    def patched(*args: Any, **kwargs: Any) -> Any:
        _SEEN_REUSE.append(kwargs.get("reuse_actors", False))
        if force_reuse is not None:
            kwargs["reuse_actors"] = force_reuse
        return original(*args, **kwargs)

    ray.tune.TuneConfig = patched  # build_tuner reads tune.TuneConfig when it runs
    return original


def run_driver(name: str, spec_json: dict[str, Any], force_reuse: bool | None
               ) -> dict[str, Any]:
    """``workers.tune.driver.run(job_id)`` in this process, on this process's Ray.

    Everything the driver does for a job (MLflow parent run, its tuner, its
    callbacks, the final selection and records) minus its process start and imports.
    """
    import ray.tune

    from search_spaces import SearchSpec
    from service.settings import get_settings
    from service.store import open_store
    from workers.tune import driver

    spec = SearchSpec.model_validate(spec_json)
    store = open_store(get_settings().database)
    job, _ = store.create_job(name=spec.name, owner="bench", spec=spec.model_dump(mode="json"),
                              num_trials=spec.planned_trials())
    store.transition(job.id, from_statuses={"queued"}, to="running")
    _TIMINGS.clear()
    _SEEN_REUSE.clear()
    original = _patch_tune_config(force_reuse)
    try:
        t0 = time.time()
        code = driver.run(job.id)
        t1 = time.time()
    finally:
        ray.tune.TuneConfig = original
    final = store.get_job(job.id)
    trials = store.list_trials(job.id)
    store.close()
    return {"mode": name, "job_id": job.id, "start": t0, "end": t1, "wall": t1 - t0,
            "trials": len(trials),
            "statuses": dict(Counter(t.status for t in trials)),
            "errors": sum(1 for t in trials if t.status == "failed") + (code != 0),
            "status": final.status if final else None,
            "mlflow_experiment_id": final.mlflow_experiment_id if final else None,
            "mlflow_parent_run_id": final.mlflow_parent_run_id if final else None,
            "reuse_actors": force_reuse if force_reuse is not None else
            (_SEEN_REUSE[0] if _SEEN_REUSE else None),
            "timings": {k: list(v) for k, v in _TIMINGS.items()}}


#: Per driver variant, the environment it runs under (None: unset, so the driver's
#: own default applies).
DRIVER_ENV: dict[str, dict[str, str | None]] = {
    "driver": {"TUNE_GLOBAL_CHECKPOINT_S": None, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": None,
               "REGTUNE_CHECKPOINT_INTERVAL_S": None},
    "driver_every_step": {"TUNE_GLOBAL_CHECKPOINT_S": "0",
                          "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": None,
                          "REGTUNE_CHECKPOINT_INTERVAL_S": None},
    "driver_ckpt_auto": {"TUNE_GLOBAL_CHECKPOINT_S": "auto",
                         "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": None,
                         "REGTUNE_CHECKPOINT_INTERVAL_S": None},
    "driver_every_epoch": {"TUNE_GLOBAL_CHECKPOINT_S": None,
                           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": None,
                           "REGTUNE_CHECKPOINT_INTERVAL_S": "0"},
}


def run_driver_variant(name: str, spec_json: dict[str, Any]) -> dict[str, Any]:
    """``run_driver`` under the variant's environment, restored afterwards."""
    from service.settings import get_settings

    saved = {k: os.environ.get(k) for k in DRIVER_ENV[name]}
    for key, value in DRIVER_ENV[name].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()
    try:
        result = run_driver(name, spec_json, None)
        # What the driver ran with (it sets its defaults with setdefault).
        result["global_checkpoint_s"] = os.environ.get(
            "TUNE_GLOBAL_CHECKPOINT_S", "unset: on change (workers.tune.snapshots)")
        result["checkpoint_interval_s"] = get_settings().checkpoint_interval_s
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
    return result
