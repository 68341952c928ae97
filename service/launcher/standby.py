"""Standby drivers: job drivers started before there is a job for them.

Why: a job's driver starts as a Ray job (the Jobs API's supervisor, a Python process,
then ray, Tune and the stores imported and joined) before it can do anything for the
job: 2.0-2.6 s from submit to ``job_started`` on the development machine (bench B1's
timeline), out of a 23 s job. A standby driver does all of that ahead of time, then
waits, polling the job store, for the job whose ``ray_submission_id`` is its own; the
supervisor hands it the next job to start by setting exactly that in the same
transition that marks the job running (``JobService._start``). Nothing else changes:
cancel, status and logs go to the Ray job the job names, and a driver that dies is
started again as ``regtune-<job>-<n>``, as before.

The pool keeps ``size`` of them. One that Ray no longer runs, or that is older than
``max_age_s`` (its driver gives up waiting at ``REGTUNE_STANDBY_IDLE_S``; the pool
hands it out no later than a minute before), is dropped or stopped instead of handed
out. A refused start is logged and tried again at the next fill. Only the supervisor
thread uses it, and it decides when to fill: on the service's own local head only while
no job runs (a standby's start takes a core from trials there), on a cluster at once.

Measured (``python -m bench --only B1``, the service with and without, one run):
``job_started`` 0.07 against 2.31 s after submit, the first epoch 2.81 against 5.10 s,
the 16-trial job 22.7 against 25.3 s (η 0.795 against 0.724).
"""

from __future__ import annotations

import logging
import time
from collections import deque

from service.launcher.base import LaunchError, Launcher, standby_submission_id

log = logging.getLogger("regtune.standby")

#: Ray job states a standby can still take a job in: starting, or waiting.
USABLE = frozenset({"PENDING", "RUNNING"})


class StandbyDrivers:
    def __init__(self, launcher: Launcher, size: int, max_age_s: float) -> None:
        self.launcher = launcher
        self.size = size
        self.max_age_s = max_age_s
        self._ready: deque[tuple[str, float]] = deque()  # (submission id, started at)
        self._taken: dict[str, float] = {}  # handed out: when each was started
        self._off = size <= 0

    def fill(self) -> None:
        """Start standbys until ``size`` are waiting (none if the launcher has none)."""
        while not self._off and len(self._ready) < self.size:
            sid = standby_submission_id()
            try:
                self.launcher.submit_standby(sid)
            except LaunchError as exc:
                if type(self.launcher).submit_standby is Launcher.submit_standby:
                    self._off = True  # this launcher keeps none: jobs start as before
                log.warning("no standby driver for now: %s", exc)
                return
            self._ready.append((sid, time.monotonic()))

    def take(self) -> str | None:
        """A waiting standby's submission id, or None: start the job's own driver."""
        while self._ready:
            sid, started = self._ready.popleft()
            if time.monotonic() - started > self.max_age_s:
                self._stop(sid)
                continue
            try:
                state = self.launcher.status(sid).state
            except LaunchError as exc:
                log.warning("standby %s: %s", sid, exc)
                self._stop(sid)
                continue
            if state in USABLE:
                self._taken = {sid: started}
                return sid
            log.warning("standby %s is %s; dropped", sid, state)
        return None

    def give_back(self, sid: str) -> None:
        """A standby taken for a job that was cancelled meanwhile: still waiting."""
        self._ready.appendleft((sid, self._taken.pop(sid, time.monotonic())))

    def close(self) -> None:
        """Stop every waiting standby (the service is stopping)."""
        while self._ready:
            self._stop(self._ready.popleft()[0])

    def _stop(self, sid: str) -> None:
        try:
            self.launcher.stop(sid)
        except LaunchError as exc:
            log.warning("stopping standby %s: %s", sid, exc)
