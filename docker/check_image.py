"""Build-time check of an image's Python environment; a failure fails `docker build`.

    python check_image.py api                  # the API image: service imports, no torch/ray
    python check_image.py worker               # the Ray image: CUDA torch at the pinned version
    python check_image.py worker --allow-cpu-torch   # the same on a CPU-only torch (tests)

Run from the directory holding pyproject.toml (the images' WORKDIR).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shutil
import sys
from pathlib import Path

#: What the API process imports, lazily included (store, migrations, MLflow client).
API_MODULES = ("service.app", "service.cli", "service.store.sql", "service.store.migrate",
               "service.launcher", "mlflow.tracking", "psycopg2", "uvicorn", "prometheus_client")
#: Must not be installed in the API image at all.
API_ABSENT = ("torch", "ray", "optuna")  # (mlflow itself brings scikit-learn)
#: What drivers (on the head) and trials (on workers) import.
WORKER_MODULES = ("torch", "ray", "ray.tune", "ray.dashboard", "optuna", "cmaes", "sklearn",
                  "pandas", "pyarrow", "matplotlib", "mlflow.tracking", "psycopg2",
                  "workers.tune.driver", "workers.tune.trainable", "workers.training",
                  "service.store.sql", "service.settings")
WORKER_EXECUTABLES = ("ray",)
API_EXECUTABLES = ("regtune", "mlflow")


def pinned_torch(pyproject: Path) -> str | None:
    match = re.search(r'"torch==([^"]+)"', pyproject.read_text())
    return match.group(1) if match else None


def check(kind: str, allow_cpu_torch: bool, pyproject: Path) -> list[str]:
    problems: list[str] = []
    modules = API_MODULES if kind == "api" else WORKER_MODULES
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failure, not the first
            problems.append(f"cannot import {name}: {type(exc).__name__}: {exc}")
    for exe in (API_EXECUTABLES if kind == "api" else WORKER_EXECUTABLES):
        if shutil.which(exe) is None:
            problems.append(f"no {exe!r} executable on PATH")
    if kind == "api":
        for name in API_ABSENT:
            if importlib.util.find_spec(name) is not None:
                problems.append(f"{name} is installed in the API image")
        return problems
    try:
        import torch
    except ImportError:
        return problems
    want = pinned_torch(pyproject)
    have = torch.__version__.split("+")[0]
    if want is not None and have != want:
        problems.append(f"torch {have} in the image, pyproject.toml pins {want}: "
                        f"pick the base image tag that carries torch {want}")
    if torch.version.cuda is None and not allow_cpu_torch:
        problems.append("torch in the image is a CPU-only build; the base image must be a "
                        "CUDA one (pytorch/pytorch:<version>-cuda<x.y>-cudnn9-runtime)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("api", "worker"))
    parser.add_argument("--allow-cpu-torch", action="store_true")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args(argv)
    problems = check(args.kind, args.allow_cpu_torch, args.pyproject)
    for problem in problems:
        print(f"check_image {args.kind}: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_image {args.kind}: ok ({sys.executable})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
