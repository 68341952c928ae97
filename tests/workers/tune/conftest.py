"""The driver run in-process against a local Ray, a real SQLite job store and MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from workers.tune.local import LocalRunner


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the session: creating its tables costs seconds each time."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql",
                                                               marks=pytest.mark.postgres)])
def mlflow_db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An MLflow store made by MLflow itself (its tables, its migrations), on SQLite and
    on PostgreSQL; one per test module, whose tests use names of their own."""
    from mlflow.tracking import MlflowClient

    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    else:
        uri = request.getfixturevalue("pg_database_factory")()
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    return uri


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_local: None,
            mlflow_uri: str) -> Iterator[LocalRunner]:
    from service.settings import get_settings
    from service.store import open_store

    monkeypatch.setenv("REGTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.delenv("REGTUNE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    store = open_store(settings.database)
    yield LocalRunner(store, settings)
    store.close()
    get_settings.cache_clear()


def tiny(name: str, **search: Any) -> dict[str, Any]:
    """A digits search small enough for a test: 2-3 epochs of a small MLP."""
    spec: dict[str, Any] = {
        "name": name, "task": "digits", "objective": {"metric": "val_accuracy"},
        "model": {"hidden_sizes": [16]},
        "train": {"epochs": 3, "batch_size": 256, "lr": 0.2},
        "space": {"reg_lambda": {"low": 1e-5, "high": 1e-2, "log": True},
                  "l1_ratio": {"low": 0.0, "high": 1.0}},
        "search": {"num_trials": 3, "max_concurrent": 2, "seed": 0, **search},
    }
    return spec
