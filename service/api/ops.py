"""Operations: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest

from service.api.deps import Context, context
from service.store.entities import JOB_STATUSES

router = APIRouter(tags=["operations"])


class Metrics:
    """A registry per app, so two apps in one test process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("regtune_request_seconds", "API request latency",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5))
        self.jobs = Gauge("regtune_jobs", "Jobs by status", ["status"], registry=self.registry)
        self.queue = Gauge("regtune_queue_length", "Jobs waiting to start",
                           registry=self.registry)
        self.trials = Gauge("regtune_trials", "Trials by status", ["status"],
                            registry=self.registry)

    def observe(self, request: Request, status: int, seconds: float) -> None:
        self.observe_scope(request.scope, status, seconds)

    def observe_scope(self, scope: Any, status: int, seconds: float) -> None:
        path = getattr(scope.get("route"), "path", "unmatched")
        self.latency.labels(scope["method"], path, str(status)).observe(seconds)

    def refresh(self, ctx: Context) -> None:
        counts = ctx.store.count_jobs_by_status()
        for status in JOB_STATUSES:
            self.jobs.labels(status).set(counts.get(status, 0))
        self.queue.set(counts.get("queued", 0))
        for status, n in ctx.store.count_trials_by_status().items():
            self.trials.labels(status).set(n)


class LatencyMiddleware:
    """Times every HTTP request into ``regtune_request_seconds``.

    A plain ASGI middleware: ``@app.middleware("http")`` (Starlette's
    BaseHTTPMiddleware) runs each request through an extra task and memory streams,
    which cost a measurable share of a status request (bench B5)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless the app starts a response

        async def send_timed(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        finally:
            ctx = getattr(scope["app"].state, "ctx", None) if "app" in scope else None
            if ctx is not None and ctx.metrics is not None:
                ctx.metrics.observe_scope(scope, status, time.perf_counter() - start)


def install_latency(app: Any) -> None:
    app.add_middleware(LatencyMiddleware)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


def _mlflow_ok(uri: str) -> tuple[bool, str]:
    try:
        if uri.startswith(("http://", "https://")):
            import httpx

            ok = httpx.get(uri.rstrip("/") + "/health", timeout=3).status_code == 200
            return ok, "reachable" if ok else "unhealthy"
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return True, "reachable"
    except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
        return False, f"{type(exc).__name__}: {exc}"[:300]


@router.get("/readyz", responses={503: {"description": "a dependency is down (same body)"}})
def readyz(response: Response, ctx: Context = Depends(context)) -> dict[str, Any]:
    """Ready: the job store, the Ray Jobs API and MLflow all answer."""
    checks: dict[str, Any] = {}
    try:
        ctx.store.count_jobs_by_status()
        checks["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001
        checks["database"] = {"ok": False, "detail": str(exc)[:300]}
    checks["ray"] = {"ok": bool(ctx.launcher.ping())}
    ok, detail = _mlflow_ok(ctx.settings.mlflow_uri)
    checks["mlflow"] = {"ok": ok, "detail": detail}
    ready = all(c["ok"] for c in checks.values())
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics", response_class=Response)
def metrics(ctx: Context = Depends(context)) -> Response:
    """Prometheus text format."""
    ctx.metrics.refresh(ctx)
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
