"""The job's parent run in MLflow: found or created, then closed with the best trial.

Found by tag, not remembered in memory, so a driver restarted after a crash
keeps writing under the same parent run instead of starting a second one.

Given the bulk path (``workers.tune.mlflow_bulk``), the run is found, made and
closed in SQL, and MLflow itself is imported only where the bulk path cannot do
the work: an experiment whose artifact location MLflow derives, the spec artifact
(:meth:`ParentRun.log_spec`, after the answer), or a call it refuses. Importing
MLflow's SQL store takes about 2 s of CPU here (``time python -c "import
mlflow.store.tracking.sqlalchemy_store"``), which the driver spent before its first
trial could start; bench B1's timeline shows the driver's start.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from search_spaces import SearchSpec

log = logging.getLogger(__name__)


def experiment_name(spec: SearchSpec) -> str:
    """All jobs of one study name share an experiment, so reruns sit side by side."""
    return f"regtune/{spec.name}"


class ParentRun:
    def __init__(self, tracking_uri: str, artifact_root: str | None, job_id: str,
                 spec: SearchSpec, owner: str, bulk: Any = None) -> None:
        self._client: Any = None
        self.bulk = bulk  # a BulkStore, or None: MLflow's client does everything
        self.tracking_uri = tracking_uri
        self.job_id = job_id
        self.spec = spec
        self.spec_logged = True  # a run found, or made by the client, has its spec
        self.experiment_id = self._experiment(artifact_root)
        self.run_id = self._parent(owner)

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _bulk(self, what: str, *args: Any) -> Any:
        """A bulk call; None: MLflow's client is to do it (refused, or the path failed)."""
        if self.bulk is None:
            return None
        from workers.tune.mlflow_bulk import attempt

        def failed(exc: Exception) -> None:
            log.warning("MLflow bulk %s failed (%s); the parent run goes through MLflow's "
                        "client", what, exc)
            self.bulk = None

        return attempt(self.bulk, what, args, failed)[1]

    def _experiment(self, artifact_root: str | None) -> str:
        name = experiment_name(self.spec)
        location = f"{artifact_root.rstrip('/')}/{self.spec.name}" if artifact_root else None
        # Tagged as model development so MLflow's UI opens on the runs table.
        tags = {"mlflow.experimentKind": "custom_model_development"}
        for what, args in [("experiment_id", (name,)),
                           ("create_experiment", (name, location, tags)),
                           ("experiment_id", (name,))]:  # made meanwhile by another driver
            found = self._bulk(what, *args)
            if found is not None:
                return found
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=location, tags=tags)
        except Exception:  # created meanwhile by another driver
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _parent(self, owner: str) -> str:
        tags = {"regtune.job_id": self.job_id, "regtune.role": "parent"}
        found = self._bulk("runs_tagged", self.experiment_id, tags, "regtune.job_id")
        if found:
            return found[0][0]
        if found is None:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`regtune.job_id` = '{self.job_id}' and "
                              "tags.`regtune.role` = 'parent'", max_results=1)
            if runs:
                return runs[0].info.run_id
        name = f"{self.spec.name} [{self.job_id}]"
        tags.update({"regtune.owner": owner, "mlflow.user": owner,
                     "regtune.algorithm": self.spec.search.algorithm,
                     "regtune.scheduler": self.spec.scheduler, "mlflow.runName": name})
        flat = {"task": self.spec.task, "objective.metric": self.spec.objective.metric,
                "objective.mode": self.spec.objective.direction,
                "objective.loss": self.spec.objective.loss,
                "search.num_trials": self.spec.search.num_trials,
                "search.seed": self.spec.search.seed, "train.epochs": self.spec.train.epochs}
        params = {k: str(v) for k, v in flat.items()}
        made = self._bulk("create_run", self.experiment_id, name, tags, params)
        if made is not None:
            self.spec_logged = False  # MLflow's artifact store: after the answer
            return made
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.client.log_batch(run.info.run_id,
                              params=[Param(k, v) for k, v in params.items()])
        self.client.log_dict(run.info.run_id, self.spec.model_dump(mode="json"), "spec.json")
        return run.info.run_id

    def log_spec(self) -> None:
        """The spec as the run's ``spec.json`` artifact, if not yet there. Called once
        the job has its answer (or has failed): a failure here is logged, not raised."""
        if self.spec_logged:
            return
        try:
            self.client.log_dict(self.run_id, self.spec.model_dump(mode="json"), "spec.json")
            self.spec_logged = True
        except Exception:  # noqa: BLE001 - the job's outcome stands; the run lacks its spec
            log.exception("could not log the spec of job %s to MLflow", self.job_id)

    def finish(self, best: dict[str, Any] | None, status: str) -> None:
        metric = f"best_{self.spec.objective.metric}"
        metrics, params, tags = [], {}, {}
        if best is not None:
            metrics = [(metric, float(best["metric"]), 0, 0)]
            params = {f"best.{k}": str(v) for k, v in sorted(best["config"].items())}
            tags = {"regtune.best_trial_id": str(best["trial_id"]),
                    "regtune.best_run_id": str(best.get("mlflow_run_id") or "")}
        end = (status, int(time.time() * 1000))
        if self._bulk("write_run", self.run_id, metrics, tags, end, params) is not None:
            return
        from mlflow.entities import Metric, Param, RunTag

        if best is not None:
            self.client.log_batch(
                self.run_id, metrics=[Metric(*m) for m in metrics],
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.run_id, status)
