"""The CLI over the REST API (REGTUNE_URL, REGTUNE_TOKEN) against the real service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SPEC = """name: e2e-cli
task: digits
train: {epochs: 2, batch_size: 256}
model: {hidden_sizes: [16]}
space:
  reg_lambda: {low: 1.0e-5, high: 1.0e-2, log: true}
search: {algorithm: random, num_trials: 2, max_concurrent: 2, seed: 5}
"""


def cli(live, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REGTUNE_URL": live.url, "REGTUNE_TOKEN": live.tokens["bob"]}
    regtune = str(Path(sys.executable).with_name("regtune"))
    return subprocess.run([regtune, *args], env=env, capture_output=True, text=True, timeout=300)


def test_submit_wait_then_inspect(live, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    submitted = cli(live, "submit", str(spec), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    assert "2/2 trials done" in submitted.stderr  # the progress line
    best = json.loads(submitted.stdout[submitted.stdout.index("{"):])
    assert best["config"]["reg_lambda"] > 0 and 0 <= best["metric"] <= 1

    listed = cli(live, "jobs")
    assert job_id in listed.stdout and "bob" in listed.stdout
    status = json.loads(cli(live, "status", job_id).stdout)
    assert status["status"] == "succeeded" and status["owner"] == "bob"
    assert json.loads(cli(live, "best", job_id).stdout)["trial_id"] == best["trial_id"]
    assert len(json.loads(cli(live, "trials", job_id).stdout)) == 2
    assert "workers.tune.driver" in cli(live, "logs", job_id).stdout


def test_cli_reports_a_bad_spec_with_its_field(live, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(SPEC.replace("low: 1.0e-5", "low: 1.0"))
    result = cli(live, "submit", str(spec))
    assert result.returncode == 2
    assert "HTTP 422" in result.stderr and "space.reg_lambda.low" in result.stderr
