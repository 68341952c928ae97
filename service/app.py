"""The FastAPI application: wiring only. Handlers live in ``service.api``.

``create_app`` takes optional store and launcher so unit tests can pass fakes;
by default the lifespan opens the configured store, connects to (or starts) Ray,
and runs the supervisor that starts queued jobs. This module imports neither
torch nor ray: a test checks ``sys.modules`` of a running API process.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI

from service import errors
from service.api import jobs as jobs_api
from service.api import ops
from service.api.deps import Context
from service.jobs import JobService, Supervisor
from service.settings import Settings, get_settings

log = logging.getLogger("regtune.app")


def init_mlflow(uri: str) -> None:
    """Create MLflow's tables once, before drivers and the UI race to do it."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    if uri.startswith("sqlite:///"):
        # WAL: the driver writes while the UI and the service read (measured in bench B6).
        import sqlite3

        with sqlite3.connect(uri[len("sqlite:///"):]) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def create_app(settings: Settings | None = None, *, store: Any = None, launcher: Any = None,
               supervise: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or get_settings()
        cfg.check()
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        from service.store import open_store

        ctx_store = store or open_store(cfg.database)
        head = None
        ctx_launcher = launcher
        if ctx_launcher is None:
            from service.launcher import connect

            ctx_launcher, head = connect(cfg, while_starting=lambda: init_mlflow(cfg.mlflow_uri))
        jobs = JobService(cfg, ctx_store, ctx_launcher)
        ctx = Context(settings=cfg, store=ctx_store, jobs=jobs, launcher=ctx_launcher,
                      head=head, metrics=ops.Metrics(),
                      submits=asyncio.Lock() if getattr(ctx_store, "serial_writes", False)
                      else None)
        if supervise:
            ctx.supervisor = Supervisor(jobs, cfg.supervisor_interval_s)
            ctx.supervisor.start()
        app.state.ctx = ctx
        try:
            yield
        finally:
            if ctx.supervisor is not None:
                ctx.supervisor.stop()
            jobs.close()
            if launcher is None:
                ctx_launcher.close()
            if head is not None:
                head.stop()
            if store is None:
                ctx_store.close()

    app = FastAPI(title="regtune", version="0.1.0", lifespan=lifespan,
                  description="A hyperparameter-search service for how models are regularized.")
    errors.install(app)
    ops.install_latency(app)
    app.include_router(ops.router)
    app.include_router(jobs_api.router)
    return app
