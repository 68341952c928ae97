"""The Ray Jobs API over plain HTTP: the API process never imports ray.

The entrypoint is built here from a fixed module and the job id; the runtime
environment carries only the service's own settings (store URLs), so the
service is the one Jobs API client and users cannot reach runtime_env, pip,
working_dir or the entrypoint.
"""

from __future__ import annotations

import shlex

import httpx

from service.launcher.base import (JOB_ID, STANDBY_ID, LaunchError, Launcher, LaunchStatus,
                                   submission_id)

DRIVER_MODULE = "workers.tune.driver"


class RayJobsLauncher(Launcher):
    def __init__(self, address: str, *, token: str | None, driver_python: str,
                 driver_env: dict[str, str], timeout: float = 30.0) -> None:
        address = address if "://" in address else f"http://{address}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=address.rstrip("/"), headers=headers, timeout=timeout)
        self.driver_python = driver_python
        self.driver_env = dict(driver_env)

    def entrypoint(self, job_id: str) -> str:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return f"{shlex.quote(self.driver_python)} -m {DRIVER_MODULE} --job-id {job_id}"

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise LaunchError(f"Ray Jobs API unreachable at {self.http.base_url}: {exc}",
                              transient=True) from exc
        if response.status_code in (401, 403):
            raise LaunchError(f"Ray Jobs API refused the service's token ({response.status_code})")
        return response

    def submit(self, job_id: str, attempt: int = 0) -> str:
        sid = submission_id(job_id, attempt)
        self._post(sid, self.entrypoint(job_id), {"regtune_job_id": job_id})
        return sid

    def submit_standby(self, submission: str) -> None:
        if not STANDBY_ID.match(submission):
            raise ValueError(f"not a standby submission id: {submission!r}")
        entrypoint = f"{shlex.quote(self.driver_python)} -m {DRIVER_MODULE} --standby {submission}"
        self._post(submission, entrypoint, {"regtune_standby": "1"})

    def _post(self, sid: str, entrypoint: str, metadata: dict[str, str]) -> None:
        body = {"entrypoint": entrypoint, "submission_id": sid,
                "runtime_env": {"env_vars": self.driver_env},
                "entrypoint_num_cpus": 0,  # the driver only coordinates; trials hold the CPUs
                "metadata": metadata}
        response = self._request("POST", "/api/jobs/", json=body)
        if response.status_code >= 400:
            # 5xx: e.g. "No available agent to submit job" while a node's job agent
            # starts; the job stays queued and is submitted again.
            raise LaunchError(f"Ray refused job {sid}: {response.status_code} {response.text[:500]}",
                              transient=response.status_code >= 500)

    def stop(self, submission: str) -> None:
        response = self._request("POST", f"/api/jobs/{submission}/stop")
        if response.status_code >= 400 and response.status_code != 404:
            raise LaunchError(f"Ray could not stop {submission}: {response.text[:500]}")

    def status(self, submission: str) -> LaunchStatus:
        response = self._request("GET", f"/api/jobs/{submission}")
        if response.status_code == 404:
            return LaunchStatus("UNKNOWN", "Ray does not know this job (cluster restarted?)")
        if response.status_code >= 400:
            raise LaunchError(f"Ray status of {submission}: {response.status_code}")
        data = response.json()
        return LaunchStatus(str(data.get("status", "UNKNOWN")), str(data.get("message") or ""))

    def logs(self, submission: str) -> str:
        response = self._request("GET", f"/api/jobs/{submission}/logs")
        if response.status_code == 404:
            return ""
        if response.status_code >= 400:
            raise LaunchError(f"Ray logs of {submission}: {response.status_code}")
        return str(response.json().get("logs", ""))

    def ping(self) -> bool:
        try:
            return self.http.get("/api/version", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.http.close()
