"""The deployed topology, described once: each process's argv, environment and health check.

Two consumers read this module, so they cannot drift apart:

* ``test_compose_file.py`` renders every template with the Compose values
  (``COMPOSE``: service names as hosts, fixed in-container ports, ``${VAR}``
  references to ``.env``) and asserts that ``docker-compose.yml`` runs exactly
  that: same command, same wiring environment, same health check;
* ``test_topology.py`` renders the same templates with native values (127.0.0.1,
  free ports, temp dirs, the venv's executables) and starts them as processes.

A template is a sequence of strings with ``{placeholders}``. An ``Opt`` group is
kept only when every placeholder it names has a value (not None): it carries
what only one side needs, e.g. ``--node-ip-address`` and free agent ports for
two Ray nodes sharing one machine, which containers with their own network
namespace do not need.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


class Opt(tuple):
    """Arguments kept only when all their placeholders have values."""

    def __new__(cls, *args: str) -> "Opt":
        return super().__new__(cls, args)


Template = Sequence["str | Opt"]


@dataclass(frozen=True)
class Process:
    service: str  # the Compose service name
    argv: Template
    env: Mapping[str, str] = field(default_factory=dict)
    #: Run with the process's environment; exit status 0 = healthy. Compose runs it
    #: as the container's healthcheck (exec form); the native test polls it.
    healthcheck: Template | None = None


def placeholders(template: Template | Mapping[str, str]) -> set[str]:
    items = template.values() if isinstance(template, Mapping) else template
    out: set[str] = set()
    for item in items:
        for part in (item if isinstance(item, Opt) else (item,)):
            out |= set(PLACEHOLDER.findall(part))
    return out


def _fill(text: str, values: Mapping[str, object]) -> str:
    missing = set(PLACEHOLDER.findall(text)) - {k for k, v in values.items() if v is not None}
    if missing:
        raise KeyError(f"no value for {sorted(missing)} in {text!r}")
    return string.Formatter().vformat(text, (), {k: str(v) for k, v in values.items()})


def render(template: Template, values: Mapping[str, object]) -> list[str]:
    out: list[str] = []
    for item in template:
        if isinstance(item, Opt):
            needed = placeholders([item])
            if all(values.get(name) is not None for name in needed):
                out.extend(_fill(part, values) for part in item)
        else:
            out.append(_fill(item, values))
    return out


def render_env(env: Mapping[str, str], values: Mapping[str, object]) -> dict[str, str]:
    return {key: _fill(value, values) for key, value in env.items()}


# --- the processes -------------------------------------------------------------------

#: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the images ship psycopg2.
DATABASE_URL = "postgresql+psycopg2://{pg_user}:{pg_password}@{pg_host}:{pg_port}/{db}"

#: The PostgreSQL server: Compose runs the official image with this init script;
#: natively the server on 127.0.0.1:5432 is used and the same script runs against it.
POSTGRES = Process(
    service="postgres",
    argv=(),  # the image's own entrypoint
    env={"POSTGRES_USER": "{pg_user}", "POSTGRES_PASSWORD": "{pg_password}",
         "POSTGRES_DB": "{regtune_db}", "MLFLOW_DB": "{mlflow_db}"},
    healthcheck=("pg_isready", "--quiet", "--username", "{pg_user}", "--dbname", "{regtune_db}",
                 Opt("--host", "{pg_check_host}"), Opt("--port", "{pg_check_port}")),
)
#: Creates MLflow's database next to regtune's (POSTGRES_DB); path relative to the repo.
POSTGRES_INIT_SCRIPT = "docker/postgres/10-create-mlflow-db.sh"

#: GET argv[1]; 200 = healthy. argv[2], if given, names the env var holding a bearer
#: token. No braces in the code: they would read as placeholders.
_HTTP_CHECK = ("import os, sys, urllib.request as u; "
               "h = dict(Authorization='Bearer ' + os.environ[sys.argv[2]]) "
               "if len(sys.argv) > 2 else dict(); "
               "sys.exit(0 if u.urlopen(u.Request(sys.argv[1], headers=h), timeout=5).status "
               "== 200 else 1)")

MLFLOW = Process(
    service="mlflow",
    argv=("{mlflow}", "server",
          "--backend-store-uri", DATABASE_URL.replace("{db}", "{mlflow_db}"),
          "--serve-artifacts", "--artifacts-destination", "{artifacts_dir}",
          "--host", "{mlflow_bind}", "--port", "{mlflow_port}",
          "--workers", "{mlflow_workers}",
          # MLflow rejects Host headers outside this list; clients say mlflow:5000.
          "--allowed-hosts", "{mlflow_allowed_hosts}"),
    healthcheck=("{python}", "-c", _HTTP_CHECK, "http://127.0.0.1:{mlflow_port}/health"),
)

RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "{ray_token}"}

RAY_HEAD = Process(
    service="ray-head",
    argv=("{ray}", "start", "--head", "--block",
          Opt("--node-ip-address", "{node_ip}"),
          "--port", "{gcs_port}",
          "--dashboard-host", "{dashboard_bind}", "--dashboard-port", "{dashboard_port}",
          "--include-dashboard", "true",
          # The head schedules no trial; drivers ask for 0 CPUs and still run here.
          "--num-cpus", "0", "--num-gpus", "0",
          "--dashboard-agent-listen-port", "{head_agent_port}",
          Opt("--dashboard-agent-grpc-port", "{head_agent_grpc_port}"),
          Opt("--metrics-export-port", "{head_metrics_port}"),
          Opt("--runtime-env-agent-port", "{head_runtime_env_port}"),
          Opt("--ray-client-server-port", "{head_client_port}"),
          Opt("--object-store-memory", "{object_store_bytes}"),
          Opt("--temp-dir", "{ray_temp_dir}"),
          "--disable-usage-stats"),
    env=RAY_ENV,
    # The Jobs API answers 200 only with the cluster's token: a wrong token fails.
    healthcheck=("{python}", "-c", _HTTP_CHECK, "http://127.0.0.1:{dashboard_port}/api/version",
                 "RAY_AUTH_TOKEN"),
)

RAY_WORKER = Process(
    service="ray-worker",
    argv=("{ray}", "start", "--address", "{ray_head_host}:{gcs_port}", "--block",
          Opt("--node-ip-address", "{node_ip}"),
          Opt("--num-cpus", "{worker_cpus}"), Opt("--num-gpus", "{worker_gpus}"),
          "--dashboard-agent-listen-port", "{worker_agent_port}",
          Opt("--dashboard-agent-grpc-port", "{worker_agent_grpc_port}"),
          Opt("--metrics-export-port", "{worker_metrics_port}"),
          Opt("--runtime-env-agent-port", "{worker_runtime_env_port}"),
          Opt("--object-store-memory", "{object_store_bytes}"),
          "--disable-usage-stats"),
    env=RAY_ENV,
    # This node's raylet, through its own dashboard agent.
    healthcheck=("{python}", "-c", _HTTP_CHECK,
                 "http://127.0.0.1:{worker_agent_port}/api/local_raylet_healthz"),
)

API = Process(
    service="api",
    argv=("{regtune}", "serve", "--host", "{api_bind}", "--port", "{api_port}"),
    env={
        "REGTUNE_AUTH": "required",
        "RAY_ADDRESS": "http://{ray_head_host}:{dashboard_port}",
        "RAY_AUTH_TOKEN": "{ray_token}",
        "REGTUNE_DATABASE_URL": DATABASE_URL.replace("{db}", "{regtune_db}"),
        "MLFLOW_TRACKING_URI": "http://{mlflow_host}:{mlflow_port}",
        "REGTUNE_STORAGE_PATH": "{storage_path}",
        "REGTUNE_DATA_DIR": "{data_dir}",
        "REGTUNE_DATA_ROOT": "{data_root}",
        "REGTUNE_DRIVER_PYTHON": "{driver_python}",
    },
    healthcheck=("{python}", "-c", _HTTP_CHECK, "http://127.0.0.1:{api_port}/readyz"),
)

PROCESSES: tuple[Process, ...] = (POSTGRES, MLFLOW, RAY_HEAD, RAY_WORKER, API)
BY_SERVICE = {p.service: p for p in PROCESSES}

#: Paths every Ray node and the API mount at the same place in Compose.
SHARED_STORAGE = "/shared/ray_results"
SHARED_DATA_ROOT = "/shared/datasets"

#: Values Compose gives the placeholders. ``${...}`` are resolved by Compose from
#: .env; the test interpolates them with a fixed test environment before comparing.
COMPOSE: dict[str, str | None] = {
    "python": "python", "ray": "ray", "mlflow": "mlflow", "regtune": "regtune",
    "pg_user": "${POSTGRES_USER:-regtune}",
    "pg_password": "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}",
    "pg_host": "postgres", "pg_port": "5432",
    "pg_check_host": None, "pg_check_port": None,  # pg_isready in the container: its socket
    "regtune_db": "${REGTUNE_DB:-regtune}", "mlflow_db": "${MLFLOW_DB:-mlflow}",
    "mlflow_host": "mlflow", "mlflow_bind": "0.0.0.0", "mlflow_port": "5000",
    "mlflow_workers": "${MLFLOW_WORKERS:-4}",
    "mlflow_allowed_hosts": "mlflow:5000,127.0.0.1:*,${MLFLOW_PUBLIC_HOSTS:-localhost:*}",
    "artifacts_dir": "/mlartifacts",
    "ray_token": "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN in .env}",
    "ray_head_host": "ray-head", "gcs_port": "6379", "node_ip": None,
    "dashboard_bind": "0.0.0.0", "dashboard_port": "8265",
    "head_agent_port": "52365", "worker_agent_port": "52365",
    "worker_cpus": None, "worker_gpus": None,  # Ray counts the container's CPUs and GPUs
    "storage_path": SHARED_STORAGE, "data_root": SHARED_DATA_ROOT,
    "data_dir": "/var/lib/regtune",
    "driver_python": "${REGTUNE_DRIVER_PYTHON:-/opt/conda/bin/python}",
    "api_bind": "0.0.0.0", "api_port": "8000",
}
