"""A reentrant lock that hands itself to its waiters in the order they arrived.

SQLite has one writer at a time, so the API process queues its writes on a lock
(:class:`~service.store.sql.SqlJobStore`). ``threading.RLock`` is not fair: the
thread that releases it, or whichever waiter the OS happens to wake first, can
take it again and again while another waits, and under concurrent submits that
unfairness is the latency tail. Handing the lock over in arrival order bounds a
writer's wait by the writers ahead of it (bench B5 runs the submit load with
either lock, side by side).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class FifoLock:
    """Reentrant; ``with lock:`` or ``acquire()``/``release()`` by the owning thread.

    A waiter parks on a lock of its own; the releasing owner makes the oldest waiter
    the owner before waking it, so no thread can overtake one already waiting.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[tuple[int, threading.Lock]] = deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None:
                self._owner, self._depth = me, 1
                return True
            gate = threading.Lock()
            gate.acquire()
            self._waiters.append((me, gate))
        gate.acquire()  # the previous owner made us the owner, then opened the gate
        return True

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a FifoLock not held by this thread")
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                self._owner, gate = self._waiters.popleft()
                self._depth = 1
                gate.release()
            else:
                self._owner = None

    def locked(self) -> bool:
        return self._owner is not None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
