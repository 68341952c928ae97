"""Run jobs through the real driver in this process, against an initialised Ray.

For the tests and for regenerating docs/results.md: the same driver, callbacks,
job store and MLflow as a deployment, without the HTTP service or the Jobs API.
"""

from __future__ import annotations

from typing import Any

from search_spaces import validate_spec


class LocalRunner:
    def __init__(self, store: Any, settings: Any) -> None:
        self.store = store
        self.settings = settings

    def submit(self, spec: dict[str, Any], owner: str = "local") -> str:
        parsed = validate_spec(spec)
        job, _ = self.store.create_job(name=parsed.name, owner=owner,
                                       spec=parsed.model_dump(mode="json"),
                                       num_trials=parsed.planned_trials())
        return job.id

    def run(self, job_id: str) -> Any:
        """Mark the job running and run its driver here; returns the finished job."""
        from workers.tune.driver import run

        if not self.store.transition(job_id, from_statuses={"queued", "succeeded"}, to="running"):
            raise RuntimeError(f"job {job_id} cannot start from {self.store.get_job(job_id).status}")
        code = run(job_id)
        job = self.store.get_job(job_id)
        if code != 0:
            raise RuntimeError(f"job {job_id} failed: {job.error}")
        return job

    def trials(self, job_id: str) -> list[Any]:
        return self.store.list_trials(job_id)

    @property
    def mlflow(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.settings.mlflow_uri)

    def history(self, job: Any, metric: str) -> dict[str, list[tuple[int, float]]]:
        """Per trial id, the metric's (epoch, value) history from MLflow."""
        client = self.mlflow
        runs = client.search_runs([job.mlflow_experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = "
                                                f"'{job.mlflow_parent_run_id}'")
        return {run.data.tags["regtune.trial_id"]:
                [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]
                for run in runs}
