"""Response models: what the API promises, checked by FastAPI and by schemathesis."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    status: int
    message: str
    fields: list[FieldProblem]


class ErrorBody(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "the body could not be parsed", 401: "no valid token", 403: "not allowed", 404: "not found", 405: "wrong method",
            409: "conflicts with the job's state", 413: "body too large",
            422: "invalid input; the error names the field", 503: "a dependency is down"}
    return {code: {"model": ErrorBody, "description": text.get(code, "error")} for code in codes}


class TrialCounts(BaseModel):
    total: int  # trials the job will run
    reported: int  # trials that have started and been recorded
    pending: int = 0
    running: int = 0
    completed: int = 0
    stopped: int = 0  # stopped early by the scheduler
    failed: int = 0
    cancelled: int = 0


class MlflowRef(BaseModel):
    tracking_uri: str
    experiment_id: str | None = None
    parent_run_id: str | None = None


class TrialAnswer(BaseModel):
    trial_id: str
    config: dict[str, Any]
    metric: float | None
    metrics: dict[str, Any]
    mlflow_run_id: str | None = None


class BestView(TrialAnswer):
    """The job's answer. ``policy`` says which rule chose it; a multi-objective job
    also lists its Pareto set, and the 1-SE rule reports the standard error used."""

    policy: str = "best"
    pareto: list[TrialAnswer] | None = None
    standard_error: float | None = None
    best_trial_id: str | None = None


class JobView(BaseModel):
    id: str
    name: str
    owner: str
    status: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    queue_position: int | None = None
    trials: TrialCounts
    best: BestView | None = None
    mlflow: MlflowRef
    spec: dict[str, Any]


class TrialView(BaseModel):
    trial_id: str
    index: int
    status: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    iteration: int
    objective: float | None = None
    mlflow_run_id: str | None = None
    node: str | None = None  # the Ray node id the trial ran on
    gpu_ids: list[str] = []
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, trial: Any) -> "TrialView":
        return cls(trial_id=trial.trial_id, index=trial.index, status=trial.status,
                   config=trial.config, metrics=trial.metrics, iteration=trial.iteration,
                   objective=trial.objective, mlflow_run_id=trial.mlflow_run_id,
                   node=trial.node, gpu_ids=[str(g) for g in (trial.gpu_ids or [])],
                   created_at=trial.created_at, updated_at=trial.updated_at)
