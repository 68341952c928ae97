"""Processes on this machine by command line, for tests that check what a stop leaves."""

from __future__ import annotations

import os
import time


def processes_mentioning(text: str, wait_s: float = 0.0) -> list[int]:
    """Pids (not this process's) whose command line holds ``text``; waits up to ``wait_s``
    for one (a process just forked shows its parent's command line until it execs)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)
