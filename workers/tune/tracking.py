"""The job's parent run in MLflow: found or created, then closed with the best trial.

Found by tag, not remembered in memory, so a driver restarted after a crash
keeps writing under the same parent run instead of starting a second one.
"""

from __future__ import annotations

from typing import Any

from search_spaces import SearchSpec


def experiment_name(spec: SearchSpec) -> str:
    """All jobs of one study name share an experiment, so reruns sit side by side."""
    return f"regtune/{spec.name}"


class ParentRun:
    def __init__(self, tracking_uri: str, artifact_root: str | None, job_id: str,
                 spec: SearchSpec, owner: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.job_id = job_id
        self.spec = spec
        self.experiment_id = self._experiment(artifact_root)
        self.run_id = self._parent(owner)

    def _experiment(self, artifact_root: str | None) -> str:
        name = experiment_name(self.spec)
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{artifact_root.rstrip('/')}/{self.spec.name}" if artifact_root else None
        try:
            # Tagged as model development so MLflow's UI opens on the runs table.
            return self.client.create_experiment(
                name, artifact_location=location,
                tags={"mlflow.experimentKind": "custom_model_development"})
        except Exception:  # created meanwhile by another driver
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _parent(self, owner: str) -> str:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`regtune.job_id` = '{self.job_id}' and "
                          "tags.`regtune.role` = 'parent'", max_results=1)
        if runs:
            return runs[0].info.run_id
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id, run_name=f"{self.spec.name} [{self.job_id}]",
            tags={"regtune.job_id": self.job_id, "regtune.role": "parent",
                  "regtune.owner": owner, "mlflow.user": owner,
                  "regtune.algorithm": self.spec.search.algorithm,
                  "regtune.scheduler": self.spec.scheduler})
        flat = {"task": self.spec.task, "objective.metric": self.spec.objective.metric,
                "objective.mode": self.spec.objective.direction,
                "objective.loss": self.spec.objective.loss,
                "search.num_trials": self.spec.search.num_trials,
                "search.seed": self.spec.search.seed, "train.epochs": self.spec.train.epochs}
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, str(v)) for k, v in flat.items()])
        self.client.log_dict(run.info.run_id, self.spec.model_dump(mode="json"), "spec.json")
        return run.info.run_id

    def finish(self, best: dict[str, Any] | None, status: str) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if best is not None:
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(f"best_{self.spec.objective.metric}", float(best["metric"]), 0, 0)],
                params=[Param(f"best.{k}", str(v)) for k, v in sorted(best["config"].items())],
                tags=[RunTag("regtune.best_trial_id", str(best["trial_id"])),
                      RunTag("regtune.best_run_id", str(best.get("mlflow_run_id") or ""))])
        self.client.set_terminated(self.run_id, status)
