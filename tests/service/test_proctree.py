"""service.launcher.proctree: the processes below a process, across sessions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from service.launcher import proctree

# A child that starts a grandchild in a session of its own (as Ray's job agent starts a
# driver), prints the grandchild's pid, then waits.
CHILD = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                     start_new_session=True)
print(g.pid, flush=True)
time.sleep(60)
"""


def test_descendants_cross_sessions_and_signals_spare_a_reused_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    try:
        found = {p.pid: p for p in proctree.descendants(os.getpid())}
        assert child.pid in found and grandchild in found
        assert found[grandchild].ppid == child.pid
        assert found[grandchild].pgid != found[child.pid].pgid  # its own session
        assert all(proctree.alive(p) for p in found.values())

        # Another process that once had this pid (an older start time) is not this one.
        stale = found[grandchild]._replace(start=found[grandchild].start - 1)
        assert not proctree.alive(stale)
        proctree.send([stale], signal.SIGKILL)
        time.sleep(0.2)
        assert proctree.alive(found[grandchild])

        proctree.send([found[grandchild]], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proctree.alive(found[grandchild]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not proctree.alive(found[grandchild])  # a zombie counts as ended
    finally:
        child.kill()
        child.wait()
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass
