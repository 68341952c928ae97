"""A standby driver (``python -m workers.tune.driver --standby ID``) imports and joins
first, then runs the job the service marks running with its submission id, and exits
when none comes. Its own ``run`` is replaced here: the driver's rounds are tested
elsewhere; what is tested is which job it runs and when."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.workers.tune.conftest import tiny
from workers.tune import driver

SID = "regtune-standby-00000000abcd"


def test_it_runs_the_job_marked_running_with_its_submission_id(harness, monkeypatch) -> None:
    ran: list[tuple[str, Any]] = []
    monkeypatch.setattr(driver, "run", lambda job_id, store=None: ran.append((job_id, store)) or 7)
    other = harness.submit(tiny("standby-other"))  # running, but another driver's
    harness.store.transition(other, from_statuses={"queued"}, to="running",
                             ray_submission_id=f"regtune-{other}")
    mine = harness.store.create_job(name="standby", owner="o", spec=tiny("standby"),
                                    num_trials=3)[0]

    def hand_over() -> None:
        time.sleep(0.3)
        harness.store.transition(mine.id, from_statuses={"queued"}, to="running",
                                 ray_submission_id=SID)

    thread = threading.Thread(target=hand_over)
    thread.start()
    started = time.monotonic()
    assert driver.standby(SID, poll_s=0.01, idle_s=30) == 7
    thread.join()
    assert [job_id for job_id, _ in ran] == [mine.id] != [other]
    assert ran[0][1] is not None  # the store it opened while waiting, not a new one
    assert time.monotonic() - started < 10


def test_it_exits_when_no_job_comes(harness, monkeypatch) -> None:
    monkeypatch.setattr(driver, "run", lambda *a, **k: pytest.fail("no job was handed over"))
    started = time.monotonic()
    assert driver.standby(SID, poll_s=0.01, idle_s=0.3) == 0
    assert 0.3 <= time.monotonic() - started < 10


@pytest.mark.parametrize("argv", [["--standby", "regtune-standby-1; id"], ["--standby", "x"],
                                  ["--standby", SID, "--job-id", "0123456789ab"], []])
def test_the_command_line_takes_a_job_id_or_a_standby_id_never_both(argv) -> None:
    with pytest.raises(SystemExit) as exited:
        driver.main(argv)
    assert exited.value.code == 2
