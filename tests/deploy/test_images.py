"""The images' dependency lists and Dockerfiles, checked without building them.

The API image installs docker/requirements-api.txt and then the package with
``--no-deps``: the list must cover everything the service imports, stay
verbatim with pyproject.toml, and keep torch and ray out, transitively.
The Ray image installs docker/requirements-worker.txt: pyproject.toml minus
torch, which the CUDA base image provides.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
HEAVY = {"torch", "ray", "optuna", "cmaes"}
#: Packages whose code the API image runs (workers/ is installed but never imported).
API_PACKAGES = ("service", "search_spaces")


def requirement_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def pyproject_dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def name(req: str) -> str:
    return canonicalize_name(Requirement(req).name)


def pyproject_service_block() -> list[str]:
    """The dependencies under pyproject's ``# service`` comment, up to the next comment."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"dependencies = \[\s*#\s*service\s*\n(.*?)\n\s*#", text, re.S)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []


def closure(requirements: list[str]) -> set[str]:
    """Distribution names pip would install for these, from installed metadata."""
    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        extras = set(req.extras)
        if key in seen and extras <= seen[key]:
            continue
        seen[key] = seen.get(key, set()) | extras
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            continue
        for dep in dist.requires or []:
            dep_req = Requirement(dep)
            if dep_req.marker is None or any(dep_req.marker.evaluate({"extra": e})
                                             for e in seen[key] | {""}):
                todo.append(dep_req)
    return set(seen)


def imported_top_level(packages: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"service", "search_spaces", "workers"}


API_REQS = requirement_lines(DOCKER / "requirements-api.txt")
WORKER_REQS = requirement_lines(DOCKER / "requirements-worker.txt")


def test_api_requirements_are_verbatim_pyproject_lines_without_heavy_packages() -> None:
    deps = pyproject_dependencies()
    assert set(API_REQS) <= set(deps), set(API_REQS) - set(deps)
    assert not {name(r) for r in API_REQS} & HEAVY


def test_api_requirements_cover_pyprojects_service_block() -> None:
    block = pyproject_service_block()
    assert block, "pyproject.toml has no '# service' block of dependencies"
    assert set(block) <= set(API_REQS), set(block) - set(API_REQS)


def test_api_requirements_cover_every_module_the_service_imports() -> None:
    installed = closure(API_REQS)
    dists = packages_distributions()
    uncovered = {}
    for module in imported_top_level(API_PACKAGES):
        owners = {canonicalize_name(d) for d in dists.get(module, [])}
        assert owners, f"{module} is imported by the service but not installed here"
        if not owners & installed:
            uncovered[module] = owners
    assert not uncovered, f"imported by the service, missing from requirements-api: {uncovered}"


def test_api_image_pulls_in_neither_torch_nor_ray_transitively() -> None:
    installed = closure(API_REQS)
    assert "fastapi" in installed and "mlflow" in installed  # the walk did walk
    assert not installed & HEAVY, installed & HEAVY
    # The job store's URL scheme needs psycopg2 (see test_compose_file).
    assert "psycopg2-binary" in installed


def test_worker_requirements_are_pyproject_minus_torch() -> None:
    deps = pyproject_dependencies()
    assert sorted(WORKER_REQS) == sorted(d for d in deps if name(d) != "torch")
    assert any(name(r) == "ray" and {"tune", "default"} <= Requirement(r).extras
               for r in WORKER_REQS)


def dockerfile_runs(path: Path) -> str:
    return "\n".join(line for line in path.read_text().replace("\\\n", " ").splitlines()
                     if line.startswith("RUN "))


def test_api_dockerfile_installs_the_list_then_the_package_without_deps() -> None:
    text = (DOCKER / "api.Dockerfile").read_text()
    runs = dockerfile_runs(DOCKER / "api.Dockerfile")
    assert "pip install -r requirements-api.txt" in runs
    assert "pip install --no-deps ." in runs
    assert "check_image.py api" in runs
    assert not re.search(r"\b(torch|ray)\b", runs)
    assert "COPY docker/requirements-api.txt" in text
    assert re.search(r"^USER (?!root)\S+", text, re.M)  # the API and MLflow run unprivileged


def test_worker_dockerfile_starts_from_a_cuda_pytorch_at_the_pinned_version() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    base = re.search(r"^ARG PYTORCH_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(rf"pytorch/pytorch:{re.escape(pin)}-cuda[\d.]+-cudnn\d+-runtime", base)
    assert re.search(r"^FROM \$\{PYTORCH_IMAGE\}", text, re.M)
    runs = dockerfile_runs(DOCKER / "worker.Dockerfile")
    assert '-m pip install -r requirements-worker.txt' in runs
    assert '-m pip install --no-deps .' in runs
    assert "check_image.py worker" in runs
    assert not re.search(r"pip install[^\n]*\btorch\b", runs)


@pytest.mark.parametrize("dockerfile", ["api.Dockerfile", "worker.Dockerfile"])
def test_build_context_sends_what_the_dockerfile_copies_and_no_venv(dockerfile: str) -> None:
    patterns = requirement_lines(DOCKER / f"{dockerfile}.dockerignore")
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    text = (DOCKER / dockerfile).read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert any(Path(source).match(a) or source.startswith(a) for a in allowed), source
    assert not any(a.startswith((".venv", ".regtune", ".git", "tests")) for a in allowed)


def _check_image(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    return subprocess.Popen([sys.executable, str(DOCKER / "check_image.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_image_check_passes_on_a_full_environment_and_catches_torch_in_the_api() -> None:
    # This venv has every worker dependency, but its torch is the CPU build: the one
    # problem the worker check may report here is exactly that.
    worker = _check_image("worker")
    # This venv has everything, so as an API image it must fail.
    api = _check_image("api")
    _, worker_err = worker.communicate(timeout=300)
    _, api_err = api.communicate(timeout=300)
    assert worker.returncode == 1
    assert [line for line in worker_err.splitlines() if line.startswith("check_image")] \
        == [line for line in worker_err.splitlines() if "CPU-only build" in line] != []
    assert api.returncode == 1
    assert "torch is installed" in api_err and "ray is installed" in api_err
