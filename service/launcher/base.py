"""Where job drivers run. The API talks to a Launcher, never to Ray directly.

A launcher starts a driver for a job id and reports on it; it never receives
request text, so nothing a user sends can become an entrypoint, an environment
or a runtime_env.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass

JOB_ID = re.compile(r"^[0-9a-f]{12}$")
#: A standby driver's submission id: made by the service (``standby_submission_id``).
STANDBY_ID = re.compile(r"^regtune-standby-[0-9a-f]{12}$")

PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
TERMINAL = frozenset({SUCCEEDED, FAILED, STOPPED})


class LaunchError(RuntimeError):
    """The cluster refused or could not be reached.

    ``transient``: worth trying again shortly (the cluster is starting, busy or
    briefly unreachable), as opposed to a refusal that will not change.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class LaunchStatus:
    state: str  # one of PENDING RUNNING SUCCEEDED FAILED STOPPED, or UNKNOWN
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def submission_id(job_id: str, attempt: int = 0) -> str:
    """The Ray submission id for a job: derived, so a restarted service finds it."""
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"regtune-{job_id}" if attempt == 0 else f"regtune-{job_id}-{attempt}"


def standby_submission_id() -> str:
    """A new standby driver's submission id (``service.launcher.standby``)."""
    return f"regtune-standby-{secrets.token_hex(6)}"


def is_standby(submission: str | None) -> bool:
    return bool(submission and STANDBY_ID.match(submission))


class Launcher(ABC):
    @abstractmethod
    def submit(self, job_id: str, attempt: int = 0) -> str:
        """Start the driver of ``job_id``; returns the submission id."""

    def submit_standby(self, submission: str) -> None:
        """Start a driver that warms up and waits for the job the service hands it
        (``service.launcher.standby``). A launcher without them refuses."""
        raise LaunchError(f"{type(self).__name__} keeps no standby drivers")

    @abstractmethod
    def stop(self, submission: str) -> None: ...

    @abstractmethod
    def status(self, submission: str) -> LaunchStatus: ...

    @abstractmethod
    def logs(self, submission: str) -> str: ...

    @abstractmethod
    def ping(self) -> bool: ...

    def close(self) -> None:
        """Release what the launcher owns (a local Ray head, connections)."""
