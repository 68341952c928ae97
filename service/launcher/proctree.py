"""The processes a local Ray head started, found through ``/proc`` (Linux).

Why: Ray's job agent starts every job's driver in a session of its own, so the
head's process group does not hold the drivers, and a signal to the group does
not reach them. A driver whose head is gone does not exit: it retries the lost
GCS for about a minute, spinning a core (seen in bench B1 after the service
stopped). :meth:`LocalRayHead.stop` uses :func:`descendants` to find them while
the process tree still links them to the head, and ends them itself.

A process is named by (pid, start time), so a pid reused after the process
ended is never signalled by mistake.
"""

from __future__ import annotations

import os
import signal
from typing import NamedTuple


class Proc(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    start: int  # clock ticks after boot: with the pid, names one process for good


def _read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":  # ended, not yet reaped
        return None
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[19]))


def _table() -> list[Proc]:
    if not os.path.isdir("/proc"):
        return []
    procs = (_read(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [p for p in procs if p is not None]


def descendants(root: int) -> list[Proc]:
    """Every live process below ``root`` in the process tree (not ``root`` itself)."""
    children: dict[int, list[Proc]] = {}
    for proc in _table():
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def alive(proc: Proc) -> bool:
    """Whether this very process (same pid and start time) still runs."""
    now = _read(proc.pid)
    return now is not None and now.start == proc.start


def send(procs: list[Proc], sig: signal.Signals) -> None:
    """Signal each process that is still the one found (a reused pid is left alone)."""
    for proc in procs:
        if alive(proc):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
