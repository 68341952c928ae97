"""Job lifecycle: submit, cancel, views, and the supervisor that starts and watches jobs.

The HTTP handlers stay thin: they call :class:`JobService`, which holds the
rules (who may cancel, what a job looks like from outside) over a
:class:`~service.store.base.JobStore` and a :class:`~service.launcher.Launcher`.
The :class:`Supervisor` thread is the only place that starts drivers: queued
jobs go out in fair order under the limits, and a driver that died without
reporting marks its job failed instead of leaving it "running" forever.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from search_spaces import SearchSpec
from search_spaces.selection import best_payload, best_trial
from service.auth import Principal, can_cancel
from service.launcher import LaunchError, Launcher, submission_id
from service.scheduling import pick_jobs_to_start, queue_positions
from service.settings import Settings
from service.store.base import JobStore
from service.store.entities import (ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, TERMINAL,
                                    TRIAL_TERMINAL, Job)

log = logging.getLogger("regtune.jobs")


class Forbidden(Exception):
    pass


class NotFoundError(Exception):
    pass


class ConflictError(Exception):
    pass


class TooManyTrials(ValueError):
    """The spec asks for more trials than this service allows per job."""

    field = "search.num_trials"


@dataclass
class Limits:
    max_running_total: int
    max_running_per_user: int


class JobService:
    def __init__(self, settings: Settings, store: JobStore, launcher: Launcher) -> None:
        self.settings = settings
        self.store = store
        self.launcher = launcher
        self.limits = Limits(settings.max_running_jobs, settings.max_running_jobs_per_user)
        self._lock = threading.Lock()  # one scheduling decision at a time in this process

    # --- commands -------------------------------------------------------------

    def submit(self, spec: SearchSpec, principal: Principal,
               idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Store the job as queued; the supervisor starts it when the queue allows."""
        planned = spec.planned_trials()
        if planned > self.settings.max_trials_per_job:
            raise TooManyTrials(f"at most {self.settings.max_trials_per_job} trials per job on "
                                f"this service, asked for {planned}")
        job, created = self.store.create_job(
            name=spec.name, owner=principal.name, spec=spec.model_dump(mode="json"),
            num_trials=planned, idempotency_key=idempotency_key)
        if created:
            self.store.add_event(job.id, "job_queued", {"owner": principal.name})
        return job, created

    def get(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        return job

    def cancel(self, job_id: str, principal: Principal, wait_s: float = 30.0) -> Job:
        job = self.get(job_id)
        if not can_cancel(principal, job):
            raise Forbidden(f"only {job.owner} or an admin may cancel job {job_id}")
        if job.status == CANCELLED:
            return job  # cancelling twice is harmless
        if job.status in TERMINAL:
            raise ConflictError(f"job {job_id} already {job.status}")
        if not self.store.transition(job_id, from_statuses=ACTIVE, to=CANCELLED,
                                     error=f"cancelled by {principal.name}"):
            return self.cancel(job_id, principal, wait_s)  # it moved meanwhile: decide again
        if job.ray_submission_id:
            self._stop_driver(job.ray_submission_id, wait_s)
        self._finalize_cancelled(job_id)
        self.store.add_event(job_id, "job_cancelled", {"by": principal.name})
        return self.get(job_id)

    def _stop_driver(self, submission: str, wait_s: float) -> None:
        try:
            self.launcher.stop(submission)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and not self.launcher.status(submission).terminal:
                time.sleep(0.5)
        except LaunchError as exc:
            log.warning("stopping %s: %s", submission, exc)

    def _finalize_cancelled(self, job_id: str) -> None:
        """No trial left running in the store, no MLflow run left RUNNING."""
        for trial in self.store.list_trials(job_id):
            if trial.status not in TRIAL_TERMINAL:
                self.store.upsert_trial(job_id, trial.trial_id, status="cancelled")
        job = self.get(job_id)
        if job.mlflow_experiment_id:
            try:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=self.settings.mlflow_uri)
                runs = client.search_runs([job.mlflow_experiment_id],
                                          filter_string=f"tags.`regtune.job_id` = '{job_id}' "
                                                        "and attributes.status = 'RUNNING'",
                                          max_results=10_000)
                for run in runs:
                    client.set_terminated(run.info.run_id, "KILLED")
            except Exception as exc:  # noqa: BLE001 - tracking must not block a cancel
                log.warning("marking MLflow runs of %s KILLED: %s", job_id, exc)

    # --- views ----------------------------------------------------------------

    def view(self, job: Job, positions: dict[str, int] | None = None) -> dict[str, Any]:
        counts = {s: 0 for s in ("pending", "running", "completed", "stopped", "failed",
                                 "cancelled")}
        for status, n in self.store.count_trials_by_status(job.id).items():
            counts[status] = counts.get(status, 0) + n
        if positions is None and job.status == QUEUED:
            positions = self.queue_positions()
        return {
            "id": job.id, "name": job.name, "owner": job.owner, "status": job.status,
            "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "error": job.error,
            "queue_position": (positions or {}).get(job.id) if job.status == QUEUED else None,
            "trials": {"total": job.num_trials, "reported": sum(counts.values()), **counts},
            "best": job.best,
            "mlflow": {"tracking_uri": self.settings.mlflow_uri,
                       "experiment_id": job.mlflow_experiment_id,
                       "parent_run_id": job.mlflow_parent_run_id},
            "spec": job.spec,
        }

    def best(self, job: Job) -> dict[str, Any] | None:
        mode = SearchSpec.model_validate(job.spec).objective.direction
        trial = best_trial(self.store.list_trials(job.id), mode)
        return best_payload(trial) if trial else None

    def queue_positions(self) -> dict[str, int]:
        running = self.store.list_jobs(status=RUNNING, limit=10_000)
        return queue_positions(self.store.queued_jobs(), running,
                               max_running_total=self.limits.max_running_total,
                               max_running_per_user=self.limits.max_running_per_user)

    # --- supervision ----------------------------------------------------------

    def tick(self) -> None:
        """One round: reconcile running jobs with Ray, then start what the queue allows."""
        with self._lock:
            for job in self.store.list_jobs(status=RUNNING, limit=10_000):
                self._reconcile(job)
            running = self.store.list_jobs(status=RUNNING, limit=10_000)
            chosen = pick_jobs_to_start(self.store.queued_jobs(), running,
                                        max_running_total=self.limits.max_running_total,
                                        max_running_per_user=self.limits.max_running_per_user)
            for job in chosen:
                self._start(job)

    def _start(self, job: Job) -> None:
        sid = submission_id(job.id)
        if not self.store.transition(job.id, from_statuses={QUEUED}, to=RUNNING,
                                     ray_submission_id=sid):
            return  # cancelled meanwhile
        try:
            self.launcher.submit(job.id)
            self.store.add_event(job.id, "job_launched", {"submission_id": sid})
        except (LaunchError, ValueError) as exc:
            if self.store.transition(job.id, from_statuses={RUNNING}, to=FAILED,
                                     error=f"could not launch: {exc}"):
                self.store.add_event(job.id, "job_failed", {"error": str(exc)})

    def _reconcile(self, job: Job) -> None:
        if not job.ray_submission_id:
            return
        try:
            status = self.launcher.status(job.ray_submission_id)
        except LaunchError as exc:
            log.warning("status of %s: %s", job.id, exc)
            return
        if not (status.terminal or status.state == "UNKNOWN"):
            return
        if self.store.get_job(job.id).status != RUNNING:  # the driver reported meanwhile
            return
        error = f"driver ended ({status.state}) without reporting: {status.message}"[:4000]
        if self.store.transition(job.id, from_statuses={RUNNING}, to=FAILED, error=error):
            self.store.add_event(job.id, "job_failed", {"error": error})


class Supervisor:
    """Calls :meth:`JobService.tick` on an interval in a daemon thread."""

    def __init__(self, jobs: JobService, interval_s: float) -> None:
        self.jobs = jobs
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="regtune-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Start a freshly queued job now rather than at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.jobs.tick()
            except Exception:  # noqa: BLE001 - keep supervising; the error is logged
                log.exception("supervisor tick failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
