"""A job's driver: ``python -m workers.tune.driver --job-id ID``, run as a Ray job.

The service builds this entrypoint from the fixed module and a job id it
generated (12 hex characters, checked again here), never from request text.
The driver reads the spec from the job store, runs Tune, and writes the outcome
back.

Work is done in *rounds*: a round is one Tune experiment, recorded in the job's
events (``round_started`` / ``round_done``). Started again for the same job (the
driver died, the cluster restarted) the driver restores the unfinished round's
experiment with its searcher state. The job is done when its finished trials
reach ``num_trials``: a round that ends short (an extended job, or a restored
experiment whose searcher state lagged behind its trials) is followed by a new
round whose sampler is told every finished trial, so nothing is re-run.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import logging
import os
import pickle
import re
import sys
import time
import traceback
from typing import Any

from search_spaces import SearchSpec, catalog

log = logging.getLogger("regtune.driver")
JOB_ID = re.compile(r"^[0-9a-f]{12}$")
STANDBY_ID = re.compile(r"^regtune-standby-[0-9a-f]{12}$")  # as service.launcher.base's
FINISHED = ("completed", "stopped", "failed")


MAX_ROUNDS = 5  # per driver run: a round that makes no progress is not retried forever


def round_events(store: Any, job_id: str) -> list[Any]:
    """The job's round_started / round_done events, read page by page."""
    found, seq = [], 0
    while True:
        page = store.events_since(job_id, seq, 5000)
        if not page:
            return found
        found += [e for e in page if e.kind in ("round_started", "round_done")]
        seq = page[-1].seq


def open_round(store: Any, job_id: str) -> str | None:
    """The round a previous driver started and did not finish, if any."""
    state: dict[str, bool] = {}
    for event in round_events(store, job_id):
        if event.kind == "round_started":
            state[event.payload["name"]] = False
        elif event.kind == "round_done":
            state[event.payload["name"]] = True
    unfinished = [name for name, done in state.items() if not done]
    return unfinished[-1] if unfinished else None


def finished_trials(store: Any, job_id: str) -> int:
    return sum(1 for t in store.list_trials(job_id) if t.status in FINISHED)


def _seed_material(spec: SearchSpec, job: Any, store: Any, settings: Any) -> tuple[list, list]:
    """(points to try first, results already known) for a new round."""
    from workers.tune import history

    finished = [t for t in store.list_trials(job.id) if t.status in FINISHED]
    if finished:  # an extension: tell the sampler what is known
        return [], history.known_results(spec, finished)
    warm = spec.search.warm_start
    if warm is None:
        return [], []
    earlier = store.get_job(warm.job)
    if earlier is None or not earlier.mlflow_experiment_id:
        raise ValueError(f"warm start: job {warm.job} has no MLflow experiment")
    points = history.top_configurations(settings.mlflow_uri, earlier.mlflow_experiment_id,
                                        warm.job, spec, warm.top_k)
    log.info("warm start from job %s: %d configurations first", warm.job, len(points))
    return points, []


def searcher_state_readable(path: str) -> bool:
    """False if the newest ``searcher-state-*.pkl`` of a local experiment cannot be read.

    Tune writes that file in place with every experiment snapshot; a driver killed
    mid-write leaves it truncated, and ``Tuner.restore`` then logs
    ``EOFError`` and waits with no trials instead of failing. Remote storage
    (``scheme://``) is not checked. The file is this driver's own, never a user's.
    """
    if "://" in path or not os.path.isdir(path):
        return True
    states = sorted(glob.glob(os.path.join(glob.escape(path), "searcher-state-*.pkl")))
    if not states:
        return True
    try:
        with open(states[-1], "rb") as handle:
            pickle.load(handle)
    except Exception:  # noqa: BLE001 - any failure to read it means Tune cannot either
        return False
    return True


def build_tuner(spec: SearchSpec, job: Any, store: Any, settings: Any, callbacks: list,
                name: str) -> Any:
    """Restore round ``name`` if it was interrupted, else start it for what remains."""
    from ray import tune

    from workers.tune.algorithms import build_plan
    from workers.tune.population import train_population
    from workers.tune.trainable import train_trial

    size = spec.search.population
    function = train_population if size > 1 else train_trial
    parameters = {"spec_json": spec.model_dump(mode="json"),
                  "checkpoint_interval_s": settings.checkpoint_interval_s}
    trainable = tune.with_resources(tune.with_parameters(function, **parameters),
                                    {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = f"{settings.results_path.rstrip('/')}/{name}"
    if not searcher_state_readable(path):
        # Restoring it would run a round with no trials forever (seen in CI): start the
        # round afresh for what the store has not finished, keeping the old one aside.
        aside = f"{path}.unreadable-{int(time.time())}"
        log.warning("the searcher state under %s is unreadable (a driver killed while "
                    "writing it); moved to %s, starting the round afresh", path, aside)
        os.rename(path, aside)
    if tune.Tuner.can_restore(path):
        log.info("restoring the Tune experiment at %s", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    remaining = job.num_trials - finished_trials(store, job.id)
    if remaining <= 0:
        return None
    points, known = _seed_material(spec, job, store, settings)
    plan = build_plan(spec, points=points, known=known, total=remaining)
    # PBT/PB2 restart a weak trial from a strong one's checkpoint: keep them all, or
    # the one being copied may already be gone.
    population = spec.search.algorithm in catalog.POPULATION_ALGORITHMS
    keep = tune.CheckpointConfig(num_to_keep=None if population else 1)
    return tune.Tuner(
        trainable, param_space=plan.param_space,
        tune_config=tune.TuneConfig(search_alg=plan.search_alg, scheduler=plan.scheduler,
                                    num_samples=-(-remaining // size), reuse_actors=True,
                                    max_concurrent_trials=spec.search.max_concurrent
                                    if size > 1 else None),
        run_config=tune.RunConfig(
            name=name, storage_path=settings.results_path, callbacks=callbacks,
            checkpoint_config=keep,
            failure_config=tune.FailureConfig(max_failures=1), verbose=1))


def skip_callback_census() -> None:
    """Turn off Ray's usage tag of Tune callbacks in this driver.

    Why: ``tune.run`` tags callback usage (``ray.air._internal.usage.tag_callbacks``)
    by importing every integration it knows to compare class names, and
    ``ray.air.integrations.mlflow`` imports MLflow itself: 1.5 s of CPU before the
    first trial starts, which the bulk path otherwise spares the driver (see
    ``workers.tune.tracking``). The tag is usage telemetry only; if Ray moves it, this
    does nothing, and ``tests/workers/tune/test_driver_imports.py`` says so.
    """
    try:
        from ray.air._internal import usage
    except ImportError:  # pragma: no cover - Ray reorganised: nothing to turn off
        return
    if hasattr(usage, "tag_callbacks"):
        usage.tag_callbacks = lambda callbacks: False


def run_rounds(spec: SearchSpec, job: Any, store: Any, settings: Any, callbacks: list) -> None:
    """Rounds until the job's finished trials reach num_trials (or no progress is made).

    Each round's experiment is snapshotted when a trial changes status or
    checkpoints (workers.tune.snapshots), so a driver killed at any moment resumes
    without re-running a finished trial or forgetting one the searcher made.
    """
    from workers.tune.recovery import searcher_counts_restored_trials
    from workers.tune.snapshots import change_driven_snapshots

    skip_callback_census()
    for _ in range(MAX_ROUNDS):
        before = finished_trials(store, job.id)
        name = open_round(store, job.id)
        if name is None:
            if before >= job.num_trials:
                return
            rounds = sum(1 for e in round_events(store, job.id) if e.kind == "round_started")
            name = f"{job.id}-r{rounds}"
            store.add_event(job.id, "round_started", {"name": name, "finished": before})
        tuner = build_tuner(spec, job, store, settings, callbacks, name)
        if tuner is not None:
            with change_driven_snapshots(), searcher_counts_restored_trials():
                tuner.fit()
        store.add_event(job.id, "round_done", {"name": name})
        after = finished_trials(store, job.id)
        if after >= job.num_trials:
            return
        if after == before:
            log.warning("round %s finished no trial; stopping at %d of %d", name, after,
                        job.num_trials)
            return
        log.info("round %s ended with %d of %d trials; another round", name, after,
                 job.num_trials)


def _close_orphans(store: Any, job_id: str, mlflow_client: Any = None,
                   experiment_id: str | None = None) -> None:
    """Trials a killed driver ran that the restored experiment does not know never come back.

    Tune uploads its experiment snapshot to the storage path from a background thread
    and skips an upload while the last one is still copying, so the snapshot a
    restarted driver finds can predate trials that had started (or be a mix of two
    snapshots). Those trials are marked failed, with why, and later rounds replace
    them; their MLflow runs are ended FAILED, not left RUNNING in the UI for ever.
    A run made in the background after the trial's row was written is not in the
    store: it is found by its tags. ``mlflow_client``: the client, or a function
    that makes it (called only if a trial was lost).
    """
    lost = {t.trial_id: t.mlflow_run_id for t in store.list_trials(job_id)
            if t.status in ("pending", "running")}
    for trial_id in lost:
        store.upsert_trial(job_id, trial_id, status="failed")
        store.add_event(job_id, "trial_failed", {"trial_id": trial_id,
                                                 "error": "lost when the driver restarted"})
    if mlflow_client is None or not lost:
        return
    if callable(mlflow_client):  # a function that makes it: most jobs lose no trial
        mlflow_client = mlflow_client()
    try:
        runs = {run_id for run_id in lost.values() if run_id}
        if experiment_id is not None and len(runs) < len(lost):
            for found in mlflow_client.search_runs(
                    [experiment_id], filter_string=f"tags.`regtune.job_id` = '{job_id}' "
                                                   "and attributes.status = 'RUNNING'"):
                if found.data.tags.get("regtune.trial_id") in lost:
                    runs.add(found.info.run_id)
        for run_id in sorted(runs):
            mlflow_client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the job's answer matters more
        log.exception("could not end the MLflow runs of lost trials %s", sorted(lost))


def _bulk_store(settings: Any) -> Any:
    """The bulk path for the parent run (workers.tune.mlflow_bulk), or None."""
    if not settings.mlflow_bulk_metrics:
        return None
    from workers.tune.mlflow_bulk import BulkStore

    return BulkStore.for_uri(settings.mlflow_uri)


def _prepare() -> None:
    # Tune's own json/csv/TensorBoard result files: nothing reads them (the job store
    # and MLflow record every result), and writing them costs the driver ~5% of its CPU.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # ... so Tune's ResultGrid, which the driver never reads, finds no result files
    # at the end of each round and would warn about every trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


#: What a driver imports before it can start a round: a standby imports them first.
WARM_MODULES = ("ray.tune", "search_spaces.selection", "service.settings", "service.store",
                "workers.tune.algorithms", "workers.tune.population", "workers.tune.trainable",
                "workers.tune.recovery", "workers.tune.reporting", "workers.tune.snapshots",
                "workers.tune.tracking")


def standby(submission: str, poll_s: float = 0.05, idle_s: float | None = None) -> int:
    """Start as a driver does, then wait for the job the service hands this Ray job
    (``service.launcher.standby``) and run it; exit 0 after ``idle_s`` (default
    ``REGTUNE_STANDBY_IDLE_S``) with none.

    Everything a driver does before it reads its job is done here first: the imports
    of ``run`` and of a round (``WARM_MODULES``), the job store opened, Ray joined. The
    job is found by the submission id the service set on it when it marked it running.
    """
    _prepare()
    for name in WARM_MODULES:
        importlib.import_module(name)
    import ray

    from service.settings import get_settings
    from service.store import open_store

    settings = get_settings()
    store = open_store(settings.database)
    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False)
    idle_s = settings.standby_idle_s if idle_s is None else idle_s
    deadline = time.monotonic() + idle_s
    log.info("standby %s: ready", submission)
    while time.monotonic() < deadline:
        job = store.running_job_of(submission)
        if job is not None:
            log.info("standby %s: runs job %s", submission, job.id)
            return run(job.id, store)
        time.sleep(poll_s)
    log.info("standby %s: no job in %.0f s; exiting", submission, idle_s)
    store.close()
    return 0


def run(job_id: str, store: Any = None) -> int:
    _prepare()
    import ray

    from search_spaces.selection import select
    from service.settings import get_settings
    from service.store import open_store
    from workers.tune.recovery import MissingCheckpointGuard
    from workers.tune.reporting import MlflowTrialCallback, StoreTrialCallback
    from workers.tune.snapshots import SnapshotTrigger
    from workers.tune.tracking import ParentRun

    settings = get_settings()
    store = store or open_store(settings.database)
    job = store.get_job(job_id)
    if job is None:
        print(f"regtune driver: no job {job_id}", file=sys.stderr)
        return 3
    if job.status != "running":
        print(f"regtune driver: job {job_id} is {job.status}, not running", file=sys.stderr)
        return 3
    spec = SearchSpec.model_validate(job.spec)
    # Trials recorded before this driver started: an earlier one was killed, and what
    # its MLflow writer still held is copied from the job store at the end (backfill).
    taken_over = sum(store.count_trials_by_status(job_id).values()) > 0
    parent = mlflow_cb = None
    try:
        parent = ParentRun(settings.mlflow_uri, settings.artifact_root, job_id, spec, job.owner,
                           bulk=_bulk_store(settings))
        store.update_job(job_id, mlflow_experiment_id=parent.experiment_id,
                         mlflow_parent_run_id=parent.run_id)
        store.add_event(job_id, "job_started", {"mlflow_parent_run_id": parent.run_id})
        mlflow_cb = MlflowTrialCallback(settings.mlflow_uri, parent.experiment_id,
                                        parent.run_id, job_id, spec,
                                        bulk_metrics=settings.mlflow_bulk_metrics)
        store_cb = StoreTrialCallback(settings.database, job_id, spec, mlflow_cb)
        if not ray.is_initialized():  # tests run the driver inside an initialised Ray
            ray.init(address="auto", log_to_driver=False)
        # Pickled with each round's experiment: a restored round has them too.
        run_rounds(spec, job, store, settings,
                   [MissingCheckpointGuard(), mlflow_cb, store_cb, SnapshotTrigger()])
        if not mlflow_cb.close():  # every queued MLflow write done before the answer
            log.warning("some MLflow writes of job %s were not made (see above)", job_id)
        _close_orphans(store, job_id, lambda: mlflow_cb.client, parent.experiment_id)
        if taken_over:
            from workers.tune.backfill import backfill

            backfill(store, job_id, mlflow_cb.client, parent.experiment_id, parent.run_id)
        answer = select(spec, store.list_trials(job_id))
        parent.finish(answer, "FINISHED")
        if store.transition(job_id, from_statuses={"running"}, to="succeeded", best=answer):
            store.add_event(job_id, "job_succeeded", {"best": answer})
        # The spec artifact and figures after the answer: /best need not wait for
        # MLflow's import and artifact store, nor the ~2 s figures take to render.
        parent.log_spec()
        from workers.tune.figures import log_job_figures

        log_job_figures(parent, spec, store.list_trials(job_id))
        return 0
    except BaseException as exc:  # noqa: BLE001 - the job must be marked, whatever happened
        message = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        if mlflow_cb is not None:
            mlflow_cb.close(timeout=30.0)  # what trials reported stays visible in MLflow
        if store.transition(job_id, from_statuses={"running"}, to="failed", error=message[:4000]):
            store.add_event(job_id, "job_failed", {"error": message[:4000]})
            if parent is not None:
                parent.finish(None, "FAILED")
                parent.log_spec()
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tune.driver")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--job-id")
    which.add_argument("--standby", metavar="SUBMISSION_ID",
                       help="wait for the job the service hands this Ray job, then run it")
    args = parser.parse_args(argv)
    if args.job_id is not None and not JOB_ID.match(args.job_id):
        parser.error("--job-id must be 12 lowercase hex characters")
    if args.standby is not None and not STANDBY_ID.match(args.standby):
        parser.error("--standby must be a standby submission id (regtune-standby-<12 hex>)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(args.job_id) if args.job_id is not None else standby(args.standby)


if __name__ == "__main__":
    sys.exit(main())
