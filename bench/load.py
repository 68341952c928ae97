"""HTTP load for bench B5, two ways.

* :func:`load_phase`, closed loop: ``concurrency`` clients send back to back. It
  measures throughput, and the latency a saturated server gives: with the server
  CPU-bound, each request waits for the ones ahead of it, so p50 is about
  ``concurrency`` x the server's CPU per request.
* :func:`open_loop_phase`, open loop: requests are due at a fixed offered rate
  whatever the answers do, and each latency counts from when the request was due,
  so a server (or generator) falling behind shows up in the figures instead of
  slowing the load down (no coordinated omission). It measures the latency people
  see at a given load.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

from bench.common import latency_summary

#: Closed-loop clients in flight.
CONCURRENCY = 8


class _Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []

    def send(self, make_request: Callable[[Any, int], Any], client: Any, i: int,
             since: float) -> None:
        """One request; its latency counts from ``since`` (perf_counter)."""
        import httpx

        try:
            code = make_request(client, i).status_code
        except httpx.HTTPError as exc:
            code = -1
            with self.lock:
                self.errors.append(type(exc).__name__)
        dt = time.perf_counter() - since
        with self.lock:
            self.latencies.append(dt)
            self.statuses[code] += 1

    def result(self, wall: float) -> dict[str, Any]:
        ok = sum(n for code, n in self.statuses.items() if 200 <= code < 300)
        return {"requests": len(self.latencies), "ok": ok, "wall": wall,
                "rps": len(self.latencies) / wall if wall else 0.0,
                "statuses": dict(self.statuses), "errors": self.errors[:5],
                **latency_summary(self.latencies)}


def _run_threads(count: int, target: Callable[[], None]) -> float:
    threads = [threading.Thread(target=target) for _ in range(count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def load_phase(url: str, make_request: Callable[[Any, int], Any], max_requests: int,
               max_seconds: float, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """``concurrency`` threads, each with its own keep-alive client, until either bound."""
    import httpx

    tally = _Tally()
    counter = iter(range(max_requests))
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                with tally.lock:
                    i = next(counter, None)
                if i is None:
                    return
                tally.send(make_request, client, i, time.perf_counter())

    return tally.result(_run_threads(concurrency, worker))


def open_loop_phase(url: str, make_request: Callable[[Any, int], Any], rate: float,
                    seconds: float, threads: int = 32) -> dict[str, Any]:
    """Request i is due at start + i / rate, for ``seconds``; ``threads`` keep-alive
    clients take the next due request as they come free. Latency = answer - due time."""
    import httpx

    tally = _Tally()
    total = int(rate * seconds)
    counter = iter(range(total))
    # Clients first (each builds an SSL context: tens of ms), so none is late to start.
    clients = [httpx.Client(base_url=url, timeout=30) for _ in range(threads)]
    free = list(clients)
    start = time.perf_counter() + 0.05  # every thread is up before the first is due

    def worker() -> None:
        with tally.lock:
            client = free.pop()
        while True:
            with tally.lock:
                i = next(counter, None)
            if i is None:
                return
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            tally.send(make_request, client, i, due)

    try:
        result = tally.result(_run_threads(threads, worker))
    finally:
        for client in clients:
            client.close()
    result["offered_rps"] = rate
    return result
