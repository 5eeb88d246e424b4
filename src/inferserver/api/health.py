"""`/healthz`, `/readyz` and `/metrics`: for load balancers, orchestrators and Prometheus."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..observability.metrics import CONTENT_TYPE
from ..scheduling.poolview import engine_views
from .envelope import Envelope, error_response, error_responses

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = Field("ok", examples=["ok"])


class Ready(Health):
    dispatch: Literal["dispatcher", "standby"] = Field(
        examples=["standby"],
        description="`dispatcher`: this process starts the runs; `standby`: another process (with PostgreSQL, "
        "perhaps on another host) does, and this one takes over when it goes. Both serve every request.",
    )
    engines_down: list[str] | None = Field(
        None, description="Engines of ENGINES that do not answer while others do (runs go to the others)."
    )


@router.get("/healthz", response_model=Envelope[Health], summary="The process is up (always 200 when it answers)")
async def healthz() -> Envelope[Health]:
    return Envelope(data=Health())


@router.get(
    "/readyz",
    response_model=Envelope[Ready],
    response_model_exclude_none=True,
    responses={
        503: {
            **error_responses(503)[503],
            "description": "Not ready: one error per failed check (Docker engine, model directory, SESSION_PATH "
            "writable and with DISK_RESERVE_BYTES free).",
        }
    },
    summary="Ready to run models: a Docker engine reachable, models loaded, SESSION_PATH writable with space",
)
async def readyz(request: Request) -> Response:
    readiness = request.app.state.readiness
    report = await readiness.report()
    if report.problems:
        return error_response(503, *report.problems)
    ready = Ready(dispatch=readiness.role(), engines_down=report.engines_down or None)
    return JSONResponse(Envelope(data=ready).model_dump(exclude_none=True))


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}, "example": "inferserver_queue_length 0.0\n"}},
            "description": "Prometheus text exposition format.",
        }
    },
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    counts = await request.app.state.sessions.count_by_status()
    engines = await engine_views(request.app.state.engines, request.app.state.sessions.store)
    body = request.app.state.metrics.exposition(counts, request.app.state.gpu_requests_on(), engines)
    return Response(body, media_type=CONTENT_TYPE)
