"""Request dependencies: the service context and the calling principal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.auth import LOCAL_PRINCIPAL, Principal
from service.errors import ApiError
from service.jobs import JobService
from service.settings import Settings
from service.store.base import JobStore


@dataclass
class Context:
    settings: Settings
    store: JobStore
    jobs: JobService
    launcher: Any
    head: Any = None
    supervisor: Any = None
    metrics: Any = None
    owned: list[Any] = field(default_factory=list)
    #: Where the store writes one at a time (SQLite), submits take their turn here, on
    #: the event loop, one in a worker thread at a time: more threads would only queue
    #: on the store's lock, each park and wake costing CPU (measured with the B5 server,
    #: 8 submits in flight: 2.0-2.6 ms of server CPU per submit without this turn,
    #: 1.7-2.1 ms with it, as with a single client). None: no turn (PostgreSQL).
    submits: asyncio.Lock | None = None


# Both dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in the
# thread pool, a thread hand-off per dependency per request (bench B5).


async def context(request: Request) -> Context:
    return request.app.state.ctx


async def principal(request: Request) -> Principal:
    """Who is calling: a bearer token when REGTUNE_AUTH=required, else the local user.

    The token is looked up in the store on every request (one indexed query, in the
    thread pool), so a token revoked by ``regtune users revoke`` in another process
    is refused on the very next request."""
    ctx: Context = request.app.state.ctx
    if ctx.settings.auth == "off":
        return LOCAL_PRINCIPAL
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "a bearer token is required (Authorization: Bearer TOKEN)",
                       [{"field": "header.authorization", "message": "missing"}], challenge)
    user = await run_in_threadpool(ctx.store.authenticate, token.strip())
    if user is None:
        raise ApiError(401, "unknown or revoked token",
                       [{"field": "header.authorization", "message": "invalid"}], challenge)
    return Principal(name=user.name, admin=user.admin)
