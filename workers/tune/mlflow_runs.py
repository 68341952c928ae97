"""What a job's MLflow child run is, and MLflow's limits on one call.

Shared by the driver's background writer (``workers.tune.mlflow_writer``) and the
backfill a resumed driver runs (``workers.tune.backfill``): a child run's tags,
finding a job's child runs, splitting one logical ``log_batch`` into calls MLflow
accepts, and a client made only when first used. Nothing here imports MLflow.
"""

from __future__ import annotations

from typing import Any, Callable

# mlflow.utils.validation in mlflow 3.17; repeated here so importing this module
# does not import MLflow (the tests' fake clients need none of it).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000


def batches(metrics: list[Any], params: list[Any], tags: list[Any]
            ) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """Split one logical log_batch into calls that each respect MLflow's limits."""
    out = []
    while metrics or params or tags or not out:
        p, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        t, tags = tags[:MAX_PARAMS_TAGS_PER_BATCH], tags[MAX_PARAMS_TAGS_PER_BATCH:]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
        m, metrics = metrics[:room], metrics[room:]
        out.append((m, p, t))
    return out


def child_run_tags(parent_run_id: str, job_id: str, unit: str) -> dict[str, str]:
    """The tags of a trial's (or member's) run under the job's parent run."""
    return {"mlflow.parentRunId": parent_run_id, "regtune.job_id": job_id,
            "regtune.trial_id": unit, "mlflow.runName": unit}


def job_runs(search: Callable[..., Any], experiment_id: str, job_id: str) -> dict[str, Any]:
    """trial id -> the job's child run, every page of them; ``search`` is a client's
    ``search_runs`` (the writer passes it wrapped in its retries)."""
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = search([experiment_id], filter_string=f"tags.`regtune.job_id` = '{job_id}'",
                      max_results=1000, page_token=token)
        for run in page:
            trial_id = run.data.tags.get("regtune.trial_id")
            if trial_id:
                runs.setdefault(trial_id, run)
        token = getattr(page, "token", None)
        if not token:
            return runs


class LazyClient:
    """MLflow's client, made on first use: on the bulk path a writer may never need it,
    nor MLflow's import (about 1.5 s of CPU in the driver, while its trials start)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory, self._made = factory, None

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            self._made = self._factory()
        return getattr(self._made, name)
