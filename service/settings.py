"""Service and driver settings, from the environment, built lazily (never at import).

The embedded default keeps everything under one data directory: the job store
(SQLite), MLflow's store (SQLite) and artifacts, Tune's results, and the token
of the local Ray head. The same code joins a team cluster through RAY_ADDRESS
(the Ray Jobs API address), MLFLOW_TRACKING_URI and REGTUNE_DATABASE_URL.
"""

from __future__ import annotations

import ipaddress
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGTUNE_", extra="ignore")

    data_dir: Path = Path(".regtune")
    database_url: str | None = None
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "REGTUNE_MLFLOW_TRACKING_URI"))
    mlflow_artifact_root: str | None = None
    #: The Ray Jobs API (dashboard) address, e.g. http://ray-head:8265. Unset: the
    #: service starts and owns a local single-node Ray head.
    ray_address: str | None = Field(None, validation_alias=AliasChoices("RAY_ADDRESS",
                                                                        "REGTUNE_RAY_ADDRESS"))
    ray_auth_token: str | None = Field(None, validation_alias=AliasChoices(
        "RAY_AUTH_TOKEN", "REGTUNE_RAY_AUTH_TOKEN"))
    ray_auth_token_path: Path | None = Field(None, validation_alias=AliasChoices(
        "RAY_AUTH_TOKEN_PATH", "REGTUNE_RAY_AUTH_TOKEN_PATH"))
    ray_num_cpus: int | None = None  # local head only; None = all cores
    ray_num_gpus: int | None = None
    #: Niceness of the local Ray head, and so of every driver and trial it starts (local
    #: head only; 0 = the API's priority). Keeps the API answering while training
    #: saturates the cores of a single machine (bench B5).
    ray_nice: int = Field(10, ge=0, le=19)
    #: Where Tune keeps trial results and checkpoints; on a cluster, storage every
    #: node shares (a mounted volume or s3://...).
    storage_path: str | None = None
    #: Root under which user tables (task "table") are read.
    data_root: Path | None = None
    #: The interpreter that runs job drivers on the Ray head.
    driver_python: str = sys.executable

    host: str = "127.0.0.1"
    port: int = 8000
    auth: Literal["off", "required"] = "off"
    max_running_jobs: int = Field(2, ge=1)
    max_running_jobs_per_user: int = Field(1, ge=1)
    max_trials_per_job: int = Field(1000, ge=1)
    max_launch_tries: int = Field(60, ge=1)  # transient refusals (cluster starting) per job
    max_driver_restarts: int = Field(2, ge=0)  # a driver that dies silently is started again
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    supervisor_interval_s: float = Field(1.0, gt=0)
    #: Seconds of training between a trial's checkpoints (0: after every epoch). A
    #: checkpoint costs a trial ~15 ms per epoch; a driver or worker that dies costs at
    #: most this much retraining. Trials a scheduler pauses (hyperband) or copies (pbt,
    #: pb2) checkpoint every epoch regardless.
    checkpoint_interval_s: float = Field(10.0, ge=0)
    #: The driver's MLflow experiment, parent run and child runs (made, params, metric
    #: values, tags, end) written straight into MLflow's SQL tables when the tracking
    #: URI is a database with the tables it knows (workers.tune.mlflow_bulk): several
    #: times less driver CPU than MLflow's client (bench B6), and no MLflow import
    #: before the job's answer; false: always through MLflow's client.
    mlflow_bulk_metrics: bool = True
    #: Drivers kept started and waiting for the next job (service.launcher.standby):
    #: the next job skips its driver's start (Ray job, Python, imports, joining Ray:
    #: job_started 0.07 against 2.3 s after submit in bench B1, both in one run). On
    #: the service's own local head one starts
    #: only while no job runs (it would take a core from the trials); on a cluster at
    #: once. 0: every job starts its own driver.
    standby_drivers: int = Field(1, ge=0, le=8)
    #: Seconds a standby driver waits for a job before it exits (the service hands out
    #: none older than a minute less); a service stopped without stopping its standbys
    #: leaves them at most this long.
    standby_idle_s: float = Field(900.0, ge=60.0)

    # --- resolved values ----------------------------------------------------------

    @property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'regtune.db'}"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_path / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str | None:
        """Artifacts of experiments the drivers create; a tracking server picks its own."""
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if self.mlflow_uri.startswith(("http://", "https://")):
            return None
        return (self.data_path / "mlartifacts").as_uri()

    @property
    def results_path(self) -> str:
        return self.storage_path or str(self.data_path / "ray_results")

    @property
    def table_root(self) -> Path:
        return (self.data_root or self.data_path / "datasets").expanduser().resolve()

    def loopback_only(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check(self) -> None:
        """Refuse settings that would expose an unauthenticated API."""
        if self.auth == "off" and not self.loopback_only():
            raise ValueError(f"REGTUNE_AUTH=off is allowed only on a loopback address; the API "
                             f"would listen on {self.host}. Set REGTUNE_AUTH=required.")

    def driver_env(self) -> dict[str, str]:
        """What a job's driver needs to reach the stores: the service's, never the user's."""
        env = {"REGTUNE_DATABASE_URL": self.database, "MLFLOW_TRACKING_URI": self.mlflow_uri,
               "REGTUNE_DATA_DIR": str(self.data_path), "REGTUNE_STORAGE_PATH": self.results_path,
               "REGTUNE_DATA_ROOT": str(self.table_root), "PYTHONUNBUFFERED": "1",
               "REGTUNE_CHECKPOINT_INTERVAL_S": str(self.checkpoint_interval_s),
               "REGTUNE_MLFLOW_BULK_METRICS": "1" if self.mlflow_bulk_metrics else "0",
               "REGTUNE_STANDBY_IDLE_S": str(self.standby_idle_s)}
        if self.artifact_root:
            env["REGTUNE_MLFLOW_ARTIFACT_ROOT"] = self.artifact_root
        return env


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
