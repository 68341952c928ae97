"""FifoLock: waiters get the lock in arrival order; reentrant; only the owner releases."""

from __future__ import annotations

import threading
import time

import pytest

from service.store.fifo_lock import FifoLock


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = FifoLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for i in range(6):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i),
                                                 lock.release()))
        t.start()
        threads.append(t)
        _wait_for(lambda n=i + 1: len(lock._waiters) == n)  # queued before the next starts
    # The releasing thread may not take it back ahead of those already waiting.
    lock.release()
    for t in threads:
        t.join(5)
    assert order == list(range(6))
    assert not lock.locked()


def test_release_then_reacquire_queues_behind_waiters() -> None:
    lock = FifoLock()
    got: list[str] = []
    lock.acquire()
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.append("waiter"),
                                              lock.release()))
    waiter.start()
    _wait_for(lambda: len(lock._waiters) == 1)
    lock.release()
    lock.acquire()  # an RLock could hand it straight back to this thread
    got.append("main")
    lock.release()
    waiter.join(5)
    assert got == ["waiter", "main"]


def test_reentrant_and_owner_only_release() -> None:
    lock = FifoLock()
    with lock:
        with lock:
            assert lock.locked()
        assert lock.locked()
        errors: list[Exception] = []

        def other() -> None:
            try:
                lock.release()
            except RuntimeError as exc:
                errors.append(exc)
        t = threading.Thread(target=other)
        t.start()
        t.join(5)
        assert errors and "not held" in str(errors[0])
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


def test_mutual_exclusion_under_contention() -> None:
    lock = FifoLock()
    inside = 0
    peak = 0
    total = 0

    def work() -> None:
        nonlocal inside, peak, total
        for _ in range(200):
            with lock:
                inside += 1
                peak = max(peak, inside)
                total += 1
                inside -= 1
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak == 1 and total == 1600
