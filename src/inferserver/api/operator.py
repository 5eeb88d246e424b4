"""`GET /operator/overview`: what the person running the server watches — every session, the GPU pool, failures.

For operators only when access control is on (api/identity.py). The web page's operator view polls it; so can a
script. Sizes are read from the session directories off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..scheduling.engines import EnginePool
from ..scheduling.poolview import hold_holders
from ..sessions.manager import SessionManager
from ..sessions.state import LIVE, QueuePlace, Status
from ..sessions.store import SessionRow
from . import deps
from .envelope import ApiError, Envelope, error_responses
from .identity import OPERATORS_ONLY, Identity, identity

router = APIRouter(prefix="/operator", tags=["operator"])

RECENT = 50  # finished sessions shown besides every live one


class SessionSummary(BaseModel):
    session_id: str
    model_id: str
    status: Status
    info: str = Field(description="The reason for a failure, or a note on progress.")
    position: int | None = Field(description="Place in the queue (1 starts next); null when not queued.")
    starts_at: float | None = Field(description="Estimated start (Unix time) of a queued run; null when unknown.")
    engine: str | None = Field(
        description="The Docker engine its run is placed on, by its name in ENGINES (`local`: the one engine of "
        "DOCKER_HOST when ENGINES is unset); null unless it is working."
    )
    gpus: list[str] = Field(description="Devices of its engine's GPU pool its run holds, as that pool lists them.")
    owner: str | None = Field(description="Who created it (with access control on); null otherwise.")
    created: float = Field(description="Unix time it was created.")
    age_seconds: float
    bytes: int = Field(description="Bytes of its files on disk: inputs, outputs and log.")


class GpuHolder(BaseModel):
    engine: str = Field(description="The engine whose pool the device is of (`local` when ENGINES is unset).")
    device: str = Field(description="The device id as its engine's pool lists it (GPUS, or the engine's `gpus`).")
    session_id: str | None = Field(description="The session whose run holds it; null when free.")
    since: float | None = Field(description="Unix time the holding run started; null when free.")


class Failure(BaseModel):
    session_id: str
    model_id: str
    finished: float | None
    reason: str


class Overview(BaseModel):
    now: float = Field(description="The server's clock (Unix time), for ages and estimates.")
    sessions: list[SessionSummary] = Field(description=f"Every live session, then the {RECENT} latest finished.")
    gpus: list[GpuHolder] = Field(
        description="Every engine's GPU pool, engine by engine in the order of ENGINES; empty without pools."
    )
    failures: list[Failure] = Field(description="Recent failed sessions with their reasons, newest first.")


async def operator_only(caller: Annotated[Identity, Depends(identity)]) -> Identity:
    if not caller.operator:
        raise ApiError(403, OPERATORS_ONLY.format(what="see the operator view"))
    return caller


def _size(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile (a clean-up, a finished upload's partial file)
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@router.get(
    "/overview",
    response_model=Envelope[Overview],
    responses=error_responses(403),
    summary="Every session with its queue place, GPUs and size; the GPU pool; recent failures (operators only)",
    dependencies=[Depends(operator_only)],
)
async def operator_overview(
    request: Request, manager: Annotated[SessionManager, Depends(deps.sessions)]
) -> Envelope[Overview]:
    store = manager.store
    engines: EnginePool = request.app.state.engines  # app.state is untyped; the lifespan sets this
    live = await store.with_status(*LIVE)
    finished = await store.recent_final(RECENT)
    # Read from the store, not the dispatcher: it may be another worker process. Engines are not asked (GET /gpus
    # does): a page polling this must not wait for an engine that does not answer.
    holders = hold_holders(engines, await store.gpu_holds())
    placed = await store.placed_runs()
    forecast = await store.forecast()
    rows = [*live, *finished]
    owners = await store.owners([row.id for row in rows])
    # Until the dispatcher has written its forecast, a queued session's place is its FIFO order.
    fifo = [row.id for row in live if row.status == Status.READY.value]
    forecast = {sid: forecast.get(sid, QueuePlace(i)) for i, sid in enumerate(fifo, 1)}
    sizes = await asyncio.to_thread(lambda: {row.id: _size(manager.root / row.id) for row in rows})
    now = time.time()
    held: dict[str, list[str]] = {}
    for (_engine, device), session_id in holders.items():
        held.setdefault(session_id, []).append(device)
    sessions = [
        _summary(
            row,
            forecast.get(row.id),
            placed[row.id].engine if row.status == Status.WORKING.value and row.id in placed else None,
            held.get(row.id, []),
            owners.get(row.id),
            sizes[row.id],
            now,
        )
        for row in rows
    ]
    started = {row.id: row.started for row in rows}
    gpus = []
    for engine in engines:
        for device in engine.gpus.devices:
            holder = holders.get((engine.name, device))
            since = started.get(holder) if holder else None
            gpus.append(GpuHolder(engine=engine.name, device=device, session_id=holder, since=since))
    failures = [
        Failure(session_id=row.id, model_id=row.model_id, finished=row.finished, reason=row.info)
        for row in finished
        if row.status == Status.FAILED.value
    ]
    return Envelope(data=Overview(now=now, sessions=sessions, gpus=gpus, failures=failures))


def _summary(
    row: SessionRow,
    place: QueuePlace | None,
    engine: str | None,
    gpus: list[str],
    owner: str | None,
    size: int,
    now: float,
) -> SessionSummary:
    queued = row.status == Status.READY.value
    return SessionSummary(
        session_id=row.id,
        model_id=row.model_id,
        status=Status(row.status),
        info=row.info,
        position=place.position if place and queued else None,
        starts_at=place.starts_at if place and queued else None,
        engine=engine,
        gpus=sorted(gpus),
        owner=owner,
        created=row.created,
        age_seconds=max(0.0, now - row.created),
        bytes=size,
    )
