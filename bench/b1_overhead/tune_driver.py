"""(b), the in-process driver variants: ``workers.tune.driver.run()`` on the bare-Tune
script's own Ray, with the driver's callback hooks timed, the ``reuse_actors`` it asks
for recorded (or overridden), and, for ``driver_lean``, MLflow's per-epoch logging
moved to a background thread (monkeypatched)."""

from __future__ import annotations

import time
from collections import defaultdict
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


def _mlflow_in_background() -> Any:
    """Move MlflowTrialCallback.on_trial_result off the driver's loop (one writer thread).

    The proposed change, as a monkeypatch: results are queued to a single thread,
    so the trial that reported goes on at once; a trial's runs are still created
    (on_trial_start) and closed (on_trial_complete, after its queued results)
    synchronously, so MLflow sees the same calls in the same order.
    """
    from concurrent.futures import ThreadPoolExecutor

    from workers.tune import reporting

    cls = reporting.MlflowTrialCallback
    originals = {h: getattr(cls, h) for h in ("on_trial_result", "on_trial_complete",
                                              "on_trial_error")}
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
    pending: dict[str, list[Any]] = defaultdict(list)

    def on_trial_result(self: Any, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        pending[trial.trial_id].append(pool.submit(
            originals["on_trial_result"], self, iteration, trials, trial, dict(result)))

    def _drain(trial: Any) -> None:
        for future in pending.pop(trial.trial_id, []):
            future.result()

    def on_trial_complete(self: Any, iteration: int, trials: list, trial: Any,
                          **info: Any) -> None:
        _drain(trial)
        originals["on_trial_complete"](self, iteration, trials, trial, **info)

    def on_trial_error(self: Any, iteration: int, trials: list, trial: Any,
                       **info: Any) -> None:
        _drain(trial)
        originals["on_trial_error"](self, iteration, trials, trial, **info)

    cls.on_trial_result = on_trial_result
    cls.on_trial_complete = on_trial_complete
    cls.on_trial_error = on_trial_error

    def undo() -> None:
        pool.shutdown(wait=True)
        for hook, fn in originals.items():
            setattr(cls, hook, fn)

    return undo


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
    return {"mode": name, "start": t0, "end": t1, "wall": t1 - t0, "trials": len(trials),
            "errors": sum(1 for t in trials if t.status == "failed") + (code != 0),
            "status": final.status if final else None,
            "reuse_actors": force_reuse if force_reuse is not None else
            (_SEEN_REUSE[0] if _SEEN_REUSE else None),
            "timings": {k: list(v) for k, v in _TIMINGS.items()}}
