"""The layering the project lives in, checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = (f"import sys, json\n{statement}\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement, forbidden", [
    ("import search_spaces; search_spaces.load_spec_file('search_spaces/demo.yaml')",
     {"service", "workers", "torch", "ray", "fastapi", "mlflow"}),
    ("import workers.training", {"ray", "mlflow", "service", "fastapi"}),
    ("import service.app; service.app.create_app()", {"torch", "ray", "workers"}),
    ("import service.cli", {"torch", "ray", "workers"}),
])
def test_import_boundaries(statement: str, forbidden: set[str]) -> None:
    assert not (loaded_after(statement) & forbidden)
