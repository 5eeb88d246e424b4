"""`GET /gpus`: the GPU setting and, with a pool (GPUS lists ids), which session holds which device; and each
Docker engine runs are placed on (ENGINES, or the one engine): up or down, GPUs busy or free, runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from ..config import GpuMode
from ..scheduling.engines import hold_key
from ..scheduling.poolview import engine_views
from ..sessions.manager import SessionManager
from . import deps
from .envelope import Envelope

router = APIRouter(tags=["server"])


class GpuDevice(BaseModel):
    id: str = Field(description="The device id as GPUS lists it.")
    session_id: str | None = Field(description="The session whose run holds it; null when free.")


class EngineStatus(BaseModel):
    name: str = Field(description="The engine's name in ENGINES (local: the one engine of DOCKER_HOST).")
    up: bool = Field(description="Whether it answered a ping just now.")
    problem: str | None = Field(description="Why it does not answer; null when up.")
    devices: list[GpuDevice] = Field(description="Its GPU pool's devices with their holders; empty without one.")
    gpus_busy: int = Field(description="Devices of its pool held by runs.")
    gpus_free: int = Field(description="Devices of its pool free.")
    runs: int = Field(description="Runs placed on it now (also those waiting for it to answer again).")
    max_runs: int = Field(description="Runs it takes at once.")
    labels: dict[str, str] = Field(description="Its labels, which a model's engine_labels may require.")


class GpuPoolStatus(BaseModel):
    gpus: str = Field(description="The GPUS setting: auto, none, all, or the device ids of the pool.")
    per_run: int | None = Field(
        description="GPUs a run gets from the pool unless its spec asks otherwise; null without a pool."
    )
    devices: list[GpuDevice] = Field(
        description="The pool's devices in order; empty without a pool (runs share the GPUs)."
    )
    engines: list[EngineStatus] = Field(description="Each Docker engine runs are placed on, in the order of ENGINES.")


@router.get(
    "/gpus", response_model=Envelope[GpuPoolStatus], summary="The GPU pool: which device is held by which session"
)
async def gpu_pool(
    request: Request, manager: Annotated[SessionManager, Depends(deps.sessions)]
) -> Envelope[GpuPoolStatus]:
    settings = manager.settings
    views = await engine_views(request.app.state.engines, manager.store)
    engines = [
        EngineStatus(
            name=v.name,
            up=v.up,
            problem=v.problem,
            devices=[GpuDevice(id=d, session_id=holder) for d, holder in v.devices],
            gpus_busy=sum(holder is not None for _, holder in v.devices),
            gpus_free=sum(holder is None for _, holder in v.devices),
            runs=v.runs,
            max_runs=v.max_runs,
            labels=v.labels,
        )
        for v in views
    ]
    # Unset ENGINES, `devices` is the one engine's pool as before; with ENGINES, every engine's as name:id.
    devices = [
        GpuDevice(id=hold_key(e.name, d.id) if settings.ENGINES else d.id, session_id=d.session_id)
        for e in engines
        for d in e.devices
    ]
    setting = settings.GPUS.value if isinstance(settings.GPUS, GpuMode) else ",".join(settings.GPUS)
    return Envelope(
        data=GpuPoolStatus(
            gpus=setting,
            per_run=settings.run_gpus if any(e.devices for e in engines) else None,
            devices=devices,
            engines=engines,
        )
    )
