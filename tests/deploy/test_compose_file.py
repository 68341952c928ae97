"""docker-compose.yml, checked without a Docker engine.

The commands, wiring variables and health checks must equal the templates of
``topology.py`` rendered with Compose's values: the same templates that
test_topology.py starts as real processes. A change to one side without the
other fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.settings import Settings
from tests.deploy import composefile as cf
from tests.deploy import topology

TEST_ENV = {"POSTGRES_PASSWORD": "pw-test", "RAY_AUTH_TOKEN": "token-test"}
#: What a multi-host .env adds.
MULTIHOST_ENV = {**TEST_ENV, "RAY_HEAD_IP": "10.0.0.5", "NFS_SERVER": "10.0.0.9",
                 "NFS_RESULTS_EXPORT": "/exports/ray_results",
                 "NFS_DATASETS_EXPORT": "/exports/datasets", "RAY_WORKER_AGENT_PORT": "52366"}
SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "api"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return cf.load(TEST_ENV)


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def values() -> dict:
    return cf.interpolate(topology.COMPOSE, TEST_ENV)


def test_required_services_are_there(services: dict) -> None:
    assert SERVICES <= set(services)
    assert set(topology.BY_SERVICE) == SERVICES


@pytest.mark.parametrize("name", ["mlflow", "ray-head", "ray-worker", "api"])
def test_command_is_the_topology_template(services: dict, values: dict, name: str) -> None:
    assert services[name]["command"] == topology.render(topology.BY_SERVICE[name].argv, values)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_wiring_environment_is_the_topology_template(services: dict, values: dict,
                                                     name: str) -> None:
    want = topology.render_env(topology.BY_SERVICE[name].env, values)
    have = cf.environment(services[name])
    assert {k: have.get(k) for k in want} == want


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_healthcheck_is_the_topology_template(services: dict, values: dict, name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} has no healthcheck"
    template = topology.BY_SERVICE[name].healthcheck
    assert template is not None
    assert check["test"] == ["CMD", *topology.render(template, values)]
    for key in ("interval", "timeout", "retries"):
        assert key in check


def test_ray_head_schedules_no_trials(services: dict) -> None:
    command = services["ray-head"]["command"]
    assert command[command.index("--num-cpus") + 1] == "0"
    assert command[command.index("--num-gpus") + 1] == "0"
    assert "--head" in command and "--block" in command
    assert "deploy" not in services["ray-head"]  # no GPU reserved for the head


def test_ray_nodes_use_token_auth(services: dict) -> None:
    for name in ("ray-head", "ray-worker"):
        env = cf.environment(services[name])
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == TEST_ENV["RAY_AUTH_TOKEN"]
    assert cf.environment(services["api"])["RAY_AUTH_TOKEN"] == TEST_ENV["RAY_AUTH_TOKEN"]


def test_ray_worker_joins_the_head_and_reserves_every_nvidia_gpu(services: dict) -> None:
    worker = services["ray-worker"]
    command = worker["command"]
    host, port = command[command.index("--address") + 1].split(":")
    head = services["ray-head"]["command"]
    assert host == "ray-head" and port == head[head.index("--port") + 1]
    assert "--block" in command
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "capabilities": ["gpu"], "count": "all"}]
    assert cf.size_bytes(worker["shm_size"]) >= 4 * 1024 ** 3
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_ray_worker_is_scalable(services: dict) -> None:
    worker = services["ray-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # a fixed host port would clash at --scale ray-worker=2
    assert "hostname" not in worker
    assert not any("container_name" in s for s in services.values())


def test_api_requires_tokens_and_points_at_the_stack(services: dict) -> None:
    env = cf.environment(services["api"])
    assert env["REGTUNE_AUTH"] == "required"
    ray = urlsplit(env["RAY_ADDRESS"])
    head = services["ray-head"]["command"]
    assert (ray.scheme, ray.hostname, str(ray.port)) == (
        "http", "ray-head", head[head.index("--dashboard-port") + 1])
    mlflow = urlsplit(env["MLFLOW_TRACKING_URI"])
    server = services["mlflow"]["command"]
    assert (mlflow.scheme, mlflow.hostname, str(mlflow.port)) == (
        "http", "mlflow", server[server.index("--port") + 1])
    assert services["api"]["command"][:2] == ["regtune", "serve"]
    assert services["api"]["command"][services["api"]["command"].index("--host") + 1] \
        == "0.0.0.0"
    assert Settings(_env_file=None, **{"auth": "required", "host": "0.0.0.0"}).check() is None


def test_job_store_and_mlflow_use_two_databases_on_postgres(services: dict) -> None:
    pg = cf.environment(services["postgres"])
    api_url = make_url(cf.environment(services["api"])["REGTUNE_DATABASE_URL"])
    server = services["mlflow"]["command"]
    mlflow_url = make_url(server[server.index("--backend-store-uri") + 1])
    for url in (api_url, mlflow_url):
        assert url.host == "postgres" and url.port == 5432
        assert url.username == pg["POSTGRES_USER"] and url.password == pg["POSTGRES_PASSWORD"]
        # A bare postgresql:// means psycopg 3 to SQLAlchemy 2.1; the images ship psycopg2.
        assert url.get_dialect().driver == "psycopg2"
    assert api_url.database == pg["POSTGRES_DB"]
    assert mlflow_url.database == pg["MLFLOW_DB"]
    assert api_url.database != mlflow_url.database


def test_postgres_creates_mlflows_database_with_the_init_script(services: dict) -> None:
    mounts = cf.volume_mounts(services["postgres"])
    script = cf.REPO / topology.POSTGRES_INIT_SCRIPT
    target = f"/docker-entrypoint-initdb.d/{script.name}"
    assert mounts[target] == (f"./{topology.POSTGRES_INIT_SCRIPT}", "ro")
    assert script.read_text().startswith("#!/bin/sh")
    assert mounts["/var/lib/postgresql/data"][0] == "pgdata"


def test_volumes(compose: dict, services: dict, values: dict) -> None:
    declared = set(compose["volumes"])
    for name, service in services.items():
        for target, (source, _) in cf.volume_mounts(service).items():
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    # Tune's storage: one volume, the same path on every Ray node and the API, and
    # the path the API hands drivers as REGTUNE_STORAGE_PATH.
    storage = values["storage_path"]
    assert cf.environment(services["api"])["REGTUNE_STORAGE_PATH"] == storage
    for name in ("ray-head", "ray-worker", "api"):
        assert cf.volume_mounts(services[name])[storage] == ("ray_results", "rw"), name
        assert cf.volume_mounts(services[name])[values["data_root"]][0] == "datasets", name
    # MLflow's artifacts on a volume, where --artifacts-destination points.
    assert cf.volume_mounts(services["mlflow"])[values["artifacts_dir"]][0] == "mlartifacts"
    server = services["mlflow"]["command"]
    assert "--serve-artifacts" in server
    assert server[server.index("--artifacts-destination") + 1] == values["artifacts_dir"]


def test_mlflow_accepts_the_host_header_its_clients_send(services: dict) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    server = services["mlflow"]["command"]
    allowed = server[server.index("--allowed-hosts") + 1].split(",")
    client_host = urlsplit(cf.environment(services["api"])["MLFLOW_TRACKING_URI"]).netloc
    assert is_allowed_host_header(allowed, client_host)
    assert is_allowed_host_header(allowed, "localhost:5000")  # the UI through the port
    assert not is_allowed_host_header(allowed, "attacker.example")
    assert "*" not in allowed


def test_start_order_waits_for_health(services: dict) -> None:
    def waits(name: str) -> dict:
        return {k: v["condition"] for k, v in services[name]["depends_on"].items()}

    assert waits("api") == {"postgres": "service_healthy", "mlflow": "service_healthy",
                            "ray-head": "service_healthy"}
    assert waits("mlflow") == {"postgres": "service_healthy"}
    assert waits("ray-worker") == {"ray-head": "service_healthy"}


def test_published_ports_keep_unauthenticated_uis_on_loopback(services: dict) -> None:
    assert "ports" not in services["postgres"]
    mlflow_ports = services["mlflow"]["ports"]
    assert mlflow_ports == ["127.0.0.1:5000:5000"]  # MLflow has no login
    assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]


def test_images_and_driver_python_match_the_dockerfiles() -> None:
    data = cf.raw()
    worker_df = (cf.REPO / "docker/worker.Dockerfile").read_text()
    driver_default = re.search(r"^ARG DRIVER_PYTHON=(\S+)", worker_df, re.M).group(1)
    api_env = data["services"]["api"]["environment"]
    assert cf.defaults(api_env["REGTUNE_DRIVER_PYTHON"]) == {
        "REGTUNE_DRIVER_PYTHON": driver_default}
    base_default = re.search(r"^ARG PYTORCH_IMAGE=(\S+)", worker_df, re.M).group(1)
    args = data["services"]["ray-head"]["build"]["args"]
    assert cf.defaults(args["PYTORCH_IMAGE"]) == {"PYTORCH_IMAGE": base_default}
    for name in ("ray-head", "ray-worker"):
        assert data["services"][name]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    for name in ("api", "mlflow"):
        assert data["services"][name]["build"]["dockerfile"] == "docker/api.Dockerfile"


# --- settings: every one accounted for --------------------------------------------------

#: Set by the compose file to wire the stack (topology API env) or by `serve`'s flags.
WIRED = {"auth", "ray_address", "ray_auth_token", "database_url", "mlflow_tracking_uri",
         "storage_path", "data_dir", "data_root", "driver_python", "host", "port"}
#: Meaningless in this deployment: the local head's size, the token's file form, bulk
#: MLflow metrics (drivers here talk to the MLflow server, never to its database).
NOT_APPLICABLE = {"ray_num_cpus", "ray_num_gpus", "ray_auth_token_path",
                  "mlflow_bulk_metrics"}


def settings_env_names() -> dict[str, str]:
    """field -> the environment variable Settings reads it from (the first alias)."""
    prefix = Settings.model_config.get("env_prefix", "")
    out = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        out[name] = str(choices[0]) if choices else (alias or f"{prefix}{name}".upper())
    return out


def test_every_setting_is_wired_or_tunable_with_the_same_default() -> None:
    api_env = cf.raw()["services"]["api"]["environment"]
    names = settings_env_names()
    for field, env_name in names.items():
        if field in WIRED | NOT_APPLICABLE:
            continue
        assert env_name in api_env, (f"setting {field} ({env_name}) is not passed to the api "
                                     "service: add it to docker-compose.yml and .env.example")
        default = cf.defaults(str(api_env[env_name])).get(env_name)
        assert default is not None, f"{env_name} should be ${{{env_name}:-default}}"
        if Settings.model_fields[field].default is not None:
            parsed = Settings(_env_file=None, **{field: default})
            assert getattr(parsed, field) == Settings.model_fields[field].default, env_name
    wired = {names[f] for f in WIRED - {"host", "port"}}
    assert wired <= set(cf.environment(cf.load(TEST_ENV)["services"]["api"]))


def test_env_example_lists_every_setting_and_every_compose_variable() -> None:
    active, mentioned = cf.env_file()
    listed = set(active) | mentioned
    missing_settings = set(settings_env_names().values()) - listed
    assert not missing_settings, f".env.example lacks settings {sorted(missing_settings)}"
    for path in cf.ALL_FILES:
        missing_vars = set(cf.variables(cf.raw(path))) - listed
        assert not missing_vars, f".env.example lacks {sorted(missing_vars)} ({path.name})"
    compose_vars = cf.variables(cf.raw())
    required = {name for name, op in compose_vars.items() if op in (":?", "?")}
    assert required == {"POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"}
    # Secrets ship empty: a copied .env.example must not start with a known password.
    assert all(active.get(name) == "" for name in required)


def test_compose_refuses_to_start_without_the_secrets() -> None:
    active, _ = cf.env_file()
    with pytest.raises(cf.MissingVariable):
        cf.load(active)
    with pytest.raises(cf.MissingVariable, match="RAY_AUTH_TOKEN"):
        cf.load({"POSTGRES_PASSWORD": "x"})


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert cf.interpolate_str("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$SET $SET",
                              env) == "v d d  $SET v"
    with pytest.raises(cf.MissingVariable):
        cf.interpolate_str("${EMPTY:?needed}", env)


# --- several hosts ------------------------------------------------------------------------

def test_multihost_head_is_the_topology_head_on_the_host_network(values: dict) -> None:
    head = cf.load(MULTIHOST_ENV, cf.MULTIHOST_FILE)["services"]["ray-head"]
    assert head["network_mode"] == "host"
    assert head["command"] == topology.render(
        topology.RAY_HEAD.argv, {**values, "node_ip": MULTIHOST_ENV["RAY_HEAD_IP"]})
    # Its drivers reach the stores at the names the API hands them.
    assert set(head["extra_hosts"]) == {"postgres:127.0.0.1", "mlflow:127.0.0.1"}
    override = cf.load(MULTIHOST_ENV, cf.MULTIHOST_FILE)
    assert override["services"]["postgres"]["ports"] == ["127.0.0.1:5432:5432"]
    for name in ("api", "ray-worker"):
        assert override["services"][name]["extra_hosts"] == ["ray-head:host-gateway"]
    with pytest.raises(cf.MissingVariable, match="RAY_HEAD_IP"):
        cf.load(TEST_ENV, cf.MULTIHOST_FILE)


def test_gpu_host_worker_is_the_topology_worker_joining_the_head(values: dict) -> None:
    worker = cf.load(MULTIHOST_ENV, cf.GPU_HOST_FILE)["services"]["ray-worker"]
    gpu_values = {**values, "ray_head_host": MULTIHOST_ENV["RAY_HEAD_IP"],
                  "worker_agent_port": MULTIHOST_ENV["RAY_WORKER_AGENT_PORT"]}
    assert worker["command"] == topology.render(topology.RAY_WORKER.argv, gpu_values)
    assert worker["healthcheck"]["test"] == [
        "CMD", *topology.render(topology.RAY_WORKER.healthcheck, gpu_values)]
    want_env = topology.render_env(topology.RAY_WORKER.env, gpu_values)
    assert cf.environment(worker) == want_env
    assert worker["network_mode"] == "host"
    assert worker["deploy"] == cf.load(TEST_ENV)["services"]["ray-worker"]["deploy"]
    assert cf.size_bytes(worker["shm_size"]) >= 4 * 1024 ** 3
    assert cf.volume_mounts(worker)[values["storage_path"]] == ("ray_results", "rw")
    assert "container_name" not in worker


@pytest.mark.parametrize("path", [cf.MULTIHOST_FILE, cf.GPU_HOST_FILE])
def test_several_hosts_share_storage_over_nfs(path: Path) -> None:
    volumes = cf.load(MULTIHOST_ENV, path)["volumes"]
    for name, export, mode in (("ray_results", "NFS_RESULTS_EXPORT", "rw"),
                               ("datasets", "NFS_DATASETS_EXPORT", "ro")):
        opts = volumes[name]["driver_opts"]
        assert opts["type"] == "nfs"
        assert opts["device"] == ":" + MULTIHOST_ENV[export]
        assert f"addr={MULTIHOST_ENV['NFS_SERVER']}" in opts["o"] and mode in opts["o"]


# --- Compose itself, where a client is installed ----------------------------------------

def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.fixture(scope="module")
def cli() -> list[str]:
    found = compose_cli()
    if found is None:
        pytest.skip("neither the `docker compose` plugin nor `docker-compose` is installed "
                    "(`make system-deps` installs Debian's docker-compose); the checks above "
                    "cover the file without it")
    return found


def run_config(cli: list[str], env: dict[str, str], tmp_path: Path, *args: str,
               files: tuple[Path, ...] = (cf.COMPOSE_FILE,)) -> subprocess.CompletedProcess:
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    # No engine is needed: `config` only parses, validates and interpolates.
    file_args = [arg for path in files for arg in ("-f", str(path))]
    return subprocess.run([*cli, "--project-directory", str(files[0].parent), *file_args,
                           "--env-file", str(env_file), "config", *args],
                          capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                               "HOME": str(tmp_path)})


def test_docker_compose_validates_the_file(cli: list[str], tmp_path: Path,
                                           services: dict) -> None:
    quiet = run_config(cli, TEST_ENV, tmp_path, "-q")
    assert quiet.returncode == 0, quiet.stderr
    resolved = yaml.safe_load(run_config(cli, TEST_ENV, tmp_path).stdout)["services"]
    # Compose resolves the file as this module does.
    for name in SERVICES:
        assert {k: str(v) for k, v in (resolved[name].get("environment") or {}).items()} \
            == cf.environment(services[name]), name
        if "command" in services[name]:
            assert resolved[name]["command"] == services[name]["command"], name


def test_docker_compose_validates_the_multihost_files(cli: list[str], tmp_path: Path,
                                                     values: dict) -> None:
    merged = run_config(cli, MULTIHOST_ENV, tmp_path, files=(cf.COMPOSE_FILE,
                                                             cf.MULTIHOST_FILE))
    assert merged.returncode == 0, merged.stderr
    head = yaml.safe_load(merged.stdout)["services"]["ray-head"]
    assert head["network_mode"] == "host"
    assert head["command"] == topology.render(
        topology.RAY_HEAD.argv, {**values, "node_ip": MULTIHOST_ENV["RAY_HEAD_IP"]})
    gpu = run_config(cli, MULTIHOST_ENV, tmp_path, "-q", files=(cf.GPU_HOST_FILE,))
    assert gpu.returncode == 0, gpu.stderr


def test_docker_compose_refuses_an_env_without_secrets(cli: list[str], tmp_path: Path) -> None:
    active, _ = cf.env_file()
    result = run_config(cli, active, tmp_path, "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "RAY_AUTH_TOKEN" in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
