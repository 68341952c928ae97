"""A job's driver: ``python -m workers.tune.driver --job-id ID``, run as a Ray job.

The service builds this entrypoint from the fixed module and a job id it
generated (12 hex characters, checked again here), never from request text.
The driver reads the spec from the job store, runs Tune, and writes the outcome
back. If it is started again for the same job (the driver died, the cluster
restarted), it restores the Tune experiment and carries on.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback
from typing import Any

from search_spaces import SearchSpec
from search_spaces.selection import best_payload, best_trial

log = logging.getLogger("regtune.driver")
JOB_ID = re.compile(r"^[0-9a-f]{12}$")


def build_tuner(spec: SearchSpec, job_id: str, settings: Any, callbacks: list) -> Any:
    from ray import tune

    from workers.tune.algorithms import build_searcher, effective_num_trials
    from workers.tune.schedulers import build_scheduler
    from workers.tune.trainable import train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, spec_json=spec.model_dump(mode="json")),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    path = f"{settings.results_path.rstrip('/')}/{job_id}"
    if tune.Tuner.can_restore(path):
        log.info("restoring the Tune experiment at %s", path)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(metric=spec.objective.metric, mode=spec.objective.direction,
                                    search_alg=build_searcher(spec),
                                    scheduler=build_scheduler(spec),
                                    num_samples=effective_num_trials(spec)),
        run_config=tune.RunConfig(
            name=job_id, storage_path=settings.results_path, callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=1), verbose=1))


def run(job_id: str) -> int:
    import ray

    from service.settings import get_settings
    from service.store import open_store
    from workers.tune.reporting import MlflowTrialCallback, StoreTrialCallback
    from workers.tune.tracking import ParentRun

    settings = get_settings()
    store = open_store(settings.database)
    job = store.get_job(job_id)
    if job is None:
        print(f"regtune driver: no job {job_id}", file=sys.stderr)
        return 3
    if job.status != "running":
        print(f"regtune driver: job {job_id} is {job.status}, not running", file=sys.stderr)
        return 3
    spec = SearchSpec.model_validate(job.spec)
    parent = None
    try:
        parent = ParentRun(settings.mlflow_uri, settings.artifact_root, job_id, spec, job.owner)
        store.update_job(job_id, mlflow_experiment_id=parent.experiment_id,
                         mlflow_parent_run_id=parent.run_id)
        store.add_event(job_id, "job_started", {"mlflow_parent_run_id": parent.run_id})
        mlflow_cb = MlflowTrialCallback(settings.mlflow_uri, parent.experiment_id,
                                        parent.run_id, job_id, spec)
        store_cb = StoreTrialCallback(settings.database, job_id, spec, mlflow_cb)
        ray.init(address="auto", log_to_driver=False)
        tuner = build_tuner(spec, job_id, settings, [mlflow_cb, store_cb])
        tuner.fit()
        best = best_trial(store.list_trials(job_id), spec.objective.direction)
        payload = best_payload(best) if best else None
        parent.finish(payload, "FINISHED")
        if store.transition(job_id, from_statuses={"running"}, to="succeeded", best=payload):
            store.add_event(job_id, "job_succeeded", {"best": payload})
        return 0
    except BaseException as exc:  # noqa: BLE001 - the job must be marked, whatever happened
        message = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        if store.transition(job_id, from_statuses={"running"}, to="failed", error=message[:4000]):
            store.add_event(job_id, "job_failed", {"error": message[:4000]})
            if parent is not None:
                parent.finish(None, "FAILED")
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.tune.driver")
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args(argv)
    if not JOB_ID.match(args.job_id):
        parser.error("--job-id must be 12 lowercase hex characters")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(args.job_id)


if __name__ == "__main__":
    sys.exit(main())
