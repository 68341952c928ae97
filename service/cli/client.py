"""A small REST client for the CLI (REGTUNE_URL, REGTUNE_TOKEN): no service internals."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx


class ApiFailure(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or str(body)[:500]
        fields = "".join(f"\n  {f['field']}: {f['message']}" for f in error.get("fields", []))
        super().__init__(f"HTTP {status}: {message}{fields}")
        self.status = status


class Client:
    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("REGTUNE_URL") or "http://127.0.0.1:8000").rstrip("/")
        token = token or os.environ.get("REGTUNE_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise ApiFailure(response.status_code, body)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def submit(self, spec_path: Path, idempotency_key: str | None = None) -> dict[str, Any]:
        ctype = "application/yaml" if spec_path.suffix in (".yaml", ".yml") else "application/json"
        headers = {"Content-Type": ctype}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self._call("POST", "/v1/jobs", content=spec_path.read_bytes(), headers=headers)

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/jobs", params={"status": status} if status else None)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def best(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/best")

    def trials(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/trials")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def extend(self, job_id: str, num_trials: int) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/extend", json={"num_trials": num_trials})

    def logs(self, job_id: str) -> str:
        return self._call("GET", f"/v1/jobs/{job_id}/logs")

    def wait(self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None,
             interval: float = 1.0, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(interval)


def progress_line(job: dict[str, Any]) -> str:
    """trials done/total, running, best so far: one line."""
    t = job["trials"]
    done = t["completed"] + t["stopped"] + t["failed"] + t["cancelled"]
    width = 24
    filled = int(width * done / max(1, t["total"]))
    bar = "#" * filled + "-" * (width - filled)
    best = job.get("best")
    metric = job["spec"]["objective"]["metric"]
    best_text = f"best {metric} {best['metric']:.4f}" if best and best.get("metric") is not None \
        else "best -"
    return (f"[{bar}] {done}/{t['total']} trials done, {t['running']} running, "
            f"{t['stopped']} stopped early | {best_text} | {job['status']}")


class ProgressPrinter:
    """Rewrites one line on a terminal; prints a line per change otherwise."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.last = ""

    def __call__(self, job: dict[str, Any]) -> None:
        line = progress_line(job)
        if line == self.last:
            return
        self.last = line
        if self.stream.isatty():
            self.stream.write("\r\033[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream.isatty() and self.last:
            self.stream.write("\n")
