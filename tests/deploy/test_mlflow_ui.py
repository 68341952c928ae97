"""The MLflow UI of the topology stack, in headless Chromium: the job's runs are there.

Opens the experiment's runs table, expands the job's parent run (named
"<spec name> [<job id>]") and finds every trial run (named by its Tune trial
id) listed under it, each linking to its MLflow run. The screenshot is kept
under the test's tmp dir; REGTUNE_UPDATE_SCREENSHOTS=1 also writes it to
docs/images/mlflow-ui.png for docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.deploy.chromium import browser, find_chromium
from tests.deploy.conftest import REPO, SPEC, Stack
from tests.deploy.test_topology import children

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
WIDTH, HEIGHT = 1400, 900
DOCS_IMAGE = REPO / "docs" / "images" / "mlflow-ui.png"

EXPAND_PARENT = """((name) => {
  const link = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === name);
  if (!link) return 'no link';
  const cell = link.closest('[role=gridcell]') || link.parentElement;
  const button = cell.querySelector('button');
  if (!button) return 'no button';
  button.click();
  return 'clicked';
})(%s)"""

CLOSE_ASSISTANT = """(() => {
  const b = document.querySelector('button[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (b) b.click();
  return !!b;
})()"""

RUN_LINKS = """[...document.querySelectorAll('a[href*="/runs/"]')]
  .map(a => [a.textContent.trim(), a.getAttribute('href')])"""


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


async def look(url: str, parent_name: str, trial_ids: list[str], shot: Path) -> dict:
    async with browser(WIDTH, HEIGHT) as page:
        await page.send("Page.navigate", url=url)
        await page.wait_for_text([parent_name], timeout=60)
        collapsed = await page.text()
        clicked = await page.evaluate(EXPAND_PARENT % json.dumps(parent_name))
        expanded = await page.wait_for_text(trial_ids, timeout=30)
        await page.evaluate(CLOSE_ASSISTANT)
        await asyncio.sleep(1.0)  # let the table re-layout before the picture
        links = await page.evaluate(RUN_LINKS)
        await page.screenshot(shot)
        return {"collapsed": collapsed, "clicked": clicked, "expanded": expanded,
                "links": links}


def test_mlflow_ui_lists_the_parent_run_and_its_trial_runs(finished: Stack,
                                                            tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("chromium is not installed (`make system-deps` installs Debian's)")
    job = finished.job
    assert job is not None
    experiment = job["mlflow"]["experiment_id"]
    parent_name = f"{SPEC['name']} [{job['id']}]"
    runs = {r.data.tags["regtune.trial_id"]: r.info.run_id for r in children(finished)}
    assert len(runs) == SPEC["search"]["num_trials"]
    shot = tmp_path / "mlflow-ui.png"
    seen = asyncio.run(look(f"{finished.mlflow_url}/#/experiments/{experiment}/runs",
                            parent_name, sorted(runs), shot))
    assert seen["clicked"] == "clicked"
    # Collapsed, the table shows the job's run and not its trials; expanded, all of them.
    assert not any(trial in seen["collapsed"] for trial in runs)
    assert parent_name in seen["expanded"]
    # Each name links to its own run in MLflow.
    links = {name: href for name, href in seen["links"]}
    assert links[parent_name].endswith(f"/experiments/{experiment}/runs/"
                                       f"{job['mlflow']['parent_run_id']}")
    for trial, run_id in runs.items():
        assert links[trial].endswith(f"/experiments/{experiment}/runs/{run_id}")
    assert png_size(shot) == (WIDTH, HEIGHT)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("REGTUNE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)
