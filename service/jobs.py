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
from search_spaces.selection import select
from service.auth import Principal, can_cancel
from service.launcher import LaunchError, Launcher, submission_id
from service.launcher.base import is_standby
from service.launcher.standby import StandbyDrivers
from service.scheduling import pick_jobs_to_start, queue_position, queue_positions
from service.settings import Settings
from service.store.base import JobStore
from service.store.entities import (ACTIVE, CANCELLED, FAILED, QUEUED, RUNNING, TERMINAL,
                                    TRIAL_TERMINAL, Job)

log = logging.getLogger("regtune.jobs")


class JobError(Exception):
    """A request the job rules refuse; the API answers ``status`` naming ``field``."""

    status = 400
    field = "path.job_id"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class NotFoundError(JobError):
    status = 404


class Forbidden(JobError):
    status = 403


class ConflictError(JobError):
    status = 409


class Rejected(JobError, ValueError):
    """A well-formed request this service refuses; ``field`` names the culprit."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field)


#: Algorithms whose search can be continued by telling a new sampler the results so far.
EXTENSIBLE = frozenset({"tpe", "random", "cmaes", "qmc", "gp", "nsga2"})


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
        # Drivers started ahead of jobs (service.launcher.standby); only the supervisor
        # thread starts jobs, so only it touches them.
        self.standby = StandbyDrivers(launcher, settings.standby_drivers,
                                      max(settings.standby_idle_s - 60.0, 0.0))
        # Resolved once: Settings.mlflow_uri resolves the data directory (realpath
        # system calls) on every access, and every job view shows it.
        self.mlflow_uri = settings.mlflow_uri
        self._lock = threading.Lock()  # one scheduling decision at a time in this process
        self._launch_tries: dict[str, int] = {}  # transient launch failures per job

    # --- commands -------------------------------------------------------------

    def submit(self, spec: SearchSpec, principal: Principal,
               idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Store the job as queued; the supervisor starts it when the queue allows."""
        planned = spec.planned_trials()
        self._check_trials(planned)
        warm = spec.search.warm_start
        if warm is not None:
            earlier = self.store.get_job(warm.job)
            if earlier is None:
                raise Rejected("search.warm_start.job", f"no job {warm.job}")
            if earlier.status != "succeeded":
                raise Rejected("search.warm_start.job",
                               f"job {warm.job} is {earlier.status}; warm start needs a "
                               "succeeded job")
        job, created = self.store.create_job(
            name=spec.name, owner=principal.name, spec=spec.model_dump(mode="json"),
            num_trials=planned, idempotency_key=idempotency_key,
            first_event=("job_queued", {"owner": principal.name}))
        return job, created

    def _check_trials(self, planned: int) -> None:
        if planned > self.settings.max_trials_per_job:
            raise Rejected("search.num_trials",
                           f"at most {self.settings.max_trials_per_job} trials per job on this "
                           f"service, asked for {planned}")

    def extend(self, job_id: str, more: int, principal: Principal) -> Job:
        """Queue a finished job again for ``more`` trials; finished trials are not re-run."""
        job = self.get(job_id)
        if not can_cancel(principal, job):
            raise Forbidden(f"only {job.owner} or an admin may extend job {job_id}")
        spec = SearchSpec.model_validate(job.spec)
        if spec.search.algorithm not in EXTENSIBLE:
            raise Rejected("num_trials", f"a {spec.search.algorithm} search cannot be extended; "
                                         f"extensible: {sorted(EXTENSIBLE)}")
        if job.status != "succeeded":
            raise ConflictError(f"job {job_id} is {job.status}; only a succeeded job is extended")
        total = job.num_trials + more
        self._check_trials(total)
        data = dict(job.spec)
        data["search"] = {**data["search"], "num_trials": total}
        SearchSpec.model_validate(data)  # still a valid spec
        if not self.store.transition(job_id, from_statuses={"succeeded"}, to=QUEUED, spec=data,
                                     num_trials=total, finished_at=None, error=None):
            raise ConflictError(f"job {job_id} changed state meanwhile")
        self.store.add_event(job_id, "job_extended", {"by": principal.name, "num_trials": total})
        return self.get(job_id)

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

    def view_of(self, job_id: str) -> dict[str, Any]:
        """The view of a job by id (404 if none), from one read of the store."""
        job, counts = self.store.job_and_trial_counts(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        return self.view(job, trial_counts=counts)

    def view(self, job: Job, positions: dict[str, int] | None = None,
             trial_counts: dict[str, int] | None = None) -> dict[str, Any]:
        counts = {s: 0 for s in ("pending", "running", "completed", "stopped", "failed",
                                 "cancelled")}
        if trial_counts is None:
            trial_counts = self.store.count_trials_by_status(job.id)
        for status, n in trial_counts.items():
            counts[status] = counts.get(status, 0) + n
        if positions is None and job.status == QUEUED:
            positions = {job.id: self.queue_position(job.id)}
        return {
            "id": job.id, "name": job.name, "owner": job.owner, "status": job.status,
            "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "error": job.error,
            "queue_position": (positions or {}).get(job.id) if job.status == QUEUED else None,
            "trials": {"total": job.num_trials, "reported": sum(counts.values()), **counts},
            "best": job.best,
            "mlflow": {"tracking_uri": self.mlflow_uri,
                       "experiment_id": job.mlflow_experiment_id,
                       "parent_run_id": job.mlflow_parent_run_id},
            "spec": job.spec,
        }

    def best(self, job: Job) -> dict[str, Any] | None:
        """The answer under the spec's selection policy (best, 1-SE rule, or Pareto set).

        A succeeded job's answer was stored by its driver: served as is, without
        reading every trial again."""
        if job.status == "succeeded" and job.best and "policy" in job.best:
            return job.best
        return select(SearchSpec.model_validate(job.spec), self.store.list_trials(job.id))

    def queue_position(self, job_id: str) -> int | None:
        """One queued job's place in line, from per-user counts (None if not queued)."""
        counts = self.store.queue_counts(job_id)
        if counts is None:
            return None
        return queue_position(counts.owner, counts.nth, counts.backlog, counts.running,
                              max_running_total=self.limits.max_running_total,
                              max_running_per_user=self.limits.max_running_per_user,
                              last_started=counts.last_started)

    def queue_positions(self) -> dict[str, int]:
        queued, running, last_started = self.store.queue_snapshot()
        return queue_positions(queued, running,
                               max_running_total=self.limits.max_running_total,
                               max_running_per_user=self.limits.max_running_per_user,
                               last_started=last_started)

    # --- supervision ----------------------------------------------------------

    def tick(self) -> None:
        """One round: reconcile running jobs with Ray, then start what the queue allows."""
        with self._lock:
            for job in self.store.list_jobs(status=RUNNING, limit=10_000):
                self._reconcile(job)
            running = self.store.list_jobs(status=RUNNING, limit=10_000)
            chosen = pick_jobs_to_start(self.store.queued_jobs(), running,
                                        max_running_total=self.limits.max_running_total,
                                        max_running_per_user=self.limits.max_running_per_user,
                                        last_started=self.store.last_started_by_owner())
            for job in chosen:
                self._start(job)
            # On its own local head the service shares the machine with its trials: a
            # standby starting (2 s of a core) would take it from a job's start and
            # trials, so there it starts only while no job runs. On a cluster drivers
            # run on the head and trials on workers: at once.
            if self.settings.ray_address or not (running or chosen):
                self.standby.fill()

    def close(self) -> None:
        """Stop the standby drivers still waiting (the service is stopping)."""
        with self._lock:
            self.standby.close()

    def _start(self, job: Job) -> None:
        if not job.ray_submission_id and self._hand_to_standby(job):
            return
        attempt = _attempt_of(job.ray_submission_id) + 1 if job.ray_submission_id else 0
        sid = submission_id(job.id, attempt)
        if not self.store.transition(job.id, from_statuses={QUEUED}, to=RUNNING,
                                     ray_submission_id=sid):
            return  # cancelled meanwhile
        try:
            self.launcher.submit(job.id, attempt)
            self.store.add_event(job.id, "job_launched", {"submission_id": sid})
        except LaunchError as exc:
            tries = self._launch_tries.get(job.id, 0) + 1
            if exc.transient and tries < self.settings.max_launch_tries:
                # Back to the queue, keeping its place; the next tick submits it again.
                self._launch_tries[job.id] = tries
                self.store.transition(job.id, from_statuses={RUNNING}, to=QUEUED,
                                      ray_submission_id=job.ray_submission_id)
                log.warning("launching %s (try %d): %s", job.id, tries, exc)
                return
            self._fail_launch(job.id, exc)
        except ValueError as exc:
            self._fail_launch(job.id, exc)
        self._launch_tries.pop(job.id, None)

    def _hand_to_standby(self, job: Job) -> bool:
        """Give a job's first start to a waiting standby driver; False: none waits.

        The transition that marks the job running names the standby's Ray job, which
        is what the standby polls for, so it takes this job and no other.
        """
        sid = self.standby.take()
        if sid is None:
            return False
        if not self.store.transition(job.id, from_statuses={QUEUED}, to=RUNNING,
                                     ray_submission_id=sid):
            self.standby.give_back(sid)  # cancelled meanwhile; the standby still waits
            return True
        self.store.add_event(job.id, "job_launched", {"submission_id": sid, "standby": True})
        self._launch_tries.pop(job.id, None)
        return True

    def _fail_launch(self, job_id: str, exc: Exception) -> None:
        self._launch_tries.pop(job_id, None)
        if self.store.transition(job_id, from_statuses={RUNNING}, to=FAILED,
                                 error=f"could not launch: {exc}"):
            self.store.add_event(job_id, "job_failed", {"error": str(exc)})

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
        # The driver died without a word (killed, node lost, cluster restarted): start it
        # again; it restores the Tune experiment and goes on where it stopped.
        attempt = _attempt_of(job.ray_submission_id) + 1
        if attempt <= self.settings.max_driver_restarts:
            sid = submission_id(job.id, attempt)
            try:
                self.launcher.submit(job.id, attempt)
            except (LaunchError, ValueError) as exc:
                log.warning("resubmitting %s: %s", job.id, exc)
            else:
                self.store.update_job(job.id, ray_submission_id=sid)
                self.store.add_event(job.id, "job_resumed", {"submission_id": sid,
                                                             "after": status.state})
                return
        error = f"driver ended ({status.state}) without reporting: {status.message}"[:4000]
        if self.store.transition(job.id, from_statuses={RUNNING}, to=FAILED, error=error):
            self.store.add_event(job.id, "job_failed", {"error": error})


def _attempt_of(submission: str | None) -> int:
    """regtune-<id> (or a standby's id) is attempt 0, regtune-<id>-<n> attempt n."""
    if is_standby(submission):
        return 0
    parts = (submission or "").split("-")
    return int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0


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
