"""/v1/jobs: submit, list, inspect, cancel, stream, logs."""

from __future__ import annotations

import asyncio
import json
from contextlib import nullcontext
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from search_spaces import SearchSpec, load_spec
from service.api.deps import Context, context, principal
from service.api.schemas import BestView, JobView, TrialView, error_responses
from service.auth import Principal
from service.errors import ApiError
from pydantic import BaseModel, ConfigDict, Field

from service.launcher import LaunchError
from service.store.entities import JOB_STATUSES, TERMINAL

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses=error_responses(400, 401, 404, 405, 422))
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="12 hex characters")]
Ctx = Annotated[Context, Depends(context)]
Who = Annotated[Principal, Depends(principal)]

_SPEC_SCHEMA = SearchSpec.model_json_schema(ref_template="#/components/schemas/{model}")
# YAML is another spelling of the same document, so it is described by the same schema.
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _SPEC_SCHEMA},
                    "application/yaml": {"schema": _SPEC_SCHEMA}},
    }
}


def _job(ctx: Context, job_id: str) -> Any:
    return ctx.jobs.get(job_id)  # NotFoundError -> 404 naming path.job_id


# Single-job handlers are ``async def`` and run their store work in one
# ``run_in_threadpool`` call.
# A plain ``def`` handler costs FastAPI a thread hand-off for itself and another for
# validating its response (and one per sync dependency): under load on a busy machine
# those hand-offs, not the queries, were most of a status request (bench B5).


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body larger than {limit} bytes", [{"field": "body",
                                                                 "message": "too large"}])
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"body larger than {limit} bytes", [{"field": "body",
                                                                     "message": "too large"}])
    return body


@router.post("", status_code=201, response_model=JobView, openapi_extra=_SPEC_BODY,
             responses={200: {"model": JobView, "description": "the job this Idempotency-Key "
                                                               "already created"},
                        **error_responses(413)})
async def submit(request: Request, response: Response, ctx: Ctx, who: Who,
                 idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Any:
    """Submit a search spec (JSON, or YAML with Content-Type application/yaml)."""
    body = await _read_body(request, ctx.settings.max_body_bytes)
    spec = load_spec(body, request.headers.get("content-type"))

    def submit_and_view() -> tuple[Any, bool, dict[str, Any]]:
        job, created = ctx.jobs.submit(spec, who, idempotency_key)
        # A job created just now has no trials yet: no need to count them.
        return job, created, ctx.jobs.view(job, trial_counts={} if created else None)

    async with ctx.submits or nullcontext():
        job, created, view = await run_in_threadpool(submit_and_view)
    if ctx.supervisor is not None and created:
        ctx.supervisor.wake()
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return view


@router.get("", response_model=list[JobView])
def list_jobs(ctx: Ctx, who: Who,
              status: Annotated[str | None, Query(pattern="^(" + "|".join(JOB_STATUSES) + ")$")] = None,
              owner: Annotated[str | None, Query(max_length=100)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> Any:
    # Plain ``def`` (a list of up to 1000 views): FastAPI validates it in a worker
    # thread rather than on the event loop.
    jobs = ctx.store.list_jobs(owner=owner, status=status, limit=limit, offset=offset)
    positions = ctx.jobs.queue_positions() if any(j.status == "queued" for j in jobs) else {}
    return [ctx.jobs.view(j, positions) for j in jobs]


@router.get("/{job_id}", response_model=JobView)
async def get_job(job_id: JobId, ctx: Ctx, who: Who) -> Any:
    return await run_in_threadpool(ctx.jobs.view_of, job_id)


@router.get("/{job_id}/trials", response_model=list[TrialView])
def trials(job_id: JobId, ctx: Ctx, who: Who) -> Any:
    # Plain ``def`` like list_jobs: up to 1000 trials are validated off the event loop.
    _job(ctx, job_id)
    return [TrialView.of(t) for t in ctx.store.list_trials(job_id)]


@router.get("/{job_id}/best", response_model=BestView)
async def best(job_id: JobId, ctx: Ctx, who: Who) -> Any:
    payload = await run_in_threadpool(lambda: ctx.jobs.best(_job(ctx, job_id)))
    if payload is None:
        raise ApiError(404, f"no trial of job {job_id} has reported its objective yet",
                       [{"field": "path.job_id", "message": "no result yet"}])
    return payload


@router.post("/{job_id}/cancel", response_model=JobView, responses=error_responses(403, 409))
async def cancel(job_id: JobId, ctx: Ctx, who: Who) -> Any:
    return await run_in_threadpool(lambda: ctx.jobs.view(ctx.jobs.cancel(job_id, who)))


_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}


class Extension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_trials: int = Field(ge=1, le=10_000, description="trials to add")


@router.post("/{job_id}/extend", response_model=JobView, responses=error_responses(403, 409))
async def extend(job_id: JobId, body: Extension, ctx: Ctx, who: Who) -> Any:
    """Run more trials of a succeeded job; the sampler is told every finished trial."""
    view = await run_in_threadpool(
        lambda: ctx.jobs.view(ctx.jobs.extend(job_id, body.num_trials, who)))
    if ctx.supervisor is not None:
        ctx.supervisor.wake()
    return view


@router.get("/{job_id}/logs", response_class=Response,
            responses={200: {**_TEXT, "description": "the driver's log"},
                       **error_responses(503)})
async def logs(job_id: JobId, ctx: Ctx, who: Who) -> Response:
    def text() -> str:
        job = _job(ctx, job_id)
        if not job.ray_submission_id:
            return ""
        try:
            return ctx.launcher.logs(job.ray_submission_id)
        except LaunchError as exc:
            raise ApiError(503, f"the cluster did not answer: {exc}")

    return PlainTextResponse(await run_in_threadpool(text))


POLL_S = 0.5
KEEP_ALIVE_S = 15.0


def _sse(event: Any) -> str:
    data = json.dumps({"seq": event.seq, "kind": event.kind, "payload": event.payload,
                       "created_at": event.created_at.isoformat()}, default=str)
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n"


@router.get("/{job_id}/events", response_class=Response,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "Server-Sent Events"}})
async def events(job_id: JobId, request: Request, ctx: Ctx, who: Who,
                 after: Annotated[int, Query(ge=0)] = 0,
                 last_event_id: Annotated[str | None, Header(max_length=20)] = None,
                 follow: bool = True) -> StreamingResponse:
    """Server-Sent Events: trial results and state changes, in order, until the job ends."""
    await run_in_threadpool(_job, ctx, job_id)
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after

    async def stream():
        seq = start
        idle = 0.0
        while True:
            batch = await asyncio.to_thread(ctx.store.events_since, job_id, seq, 500)
            for event in batch:
                seq = event.seq
                yield _sse(event)
            if batch:
                idle = 0.0
                continue
            job = await asyncio.to_thread(ctx.store.get_job, job_id)
            if not follow or job is None or job.status in TERMINAL:
                tail = await asyncio.to_thread(ctx.store.events_since, job_id, seq, 500)
                for event in tail:
                    yield _sse(event)
                return
            if await request.is_disconnected():
                return
            if idle >= KEEP_ALIVE_S:  # a comment line keeps proxies from closing the stream
                yield ": keep-alive\n\n"
                idle = 0.0
            await asyncio.sleep(POLL_S)
            idle += POLL_S

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})
