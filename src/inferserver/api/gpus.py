"""`GET /gpus`: the GPU setting and, with a pool (GPUS lists ids), which session holds which device."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from ..config import GpuMode
from ..sessions.manager import SessionManager
from . import deps
from .envelope import Envelope

router = APIRouter(tags=["server"])


class GpuDevice(BaseModel):
    id: str = Field(description="The device id as GPUS lists it.")
    session_id: str | None = Field(description="The session whose run holds it; null when free.")


class GpuPoolStatus(BaseModel):
    gpus: str = Field(description="The GPUS setting: auto, none, all, or the device ids of the pool.")
    per_run: int | None = Field(
        description="GPUs a run gets from the pool unless its spec asks otherwise; null without a pool."
    )
    devices: list[GpuDevice] = Field(
        description="The pool's devices in order; empty without a pool (runs share the GPUs)."
    )


@router.get(
    "/gpus", response_model=Envelope[GpuPoolStatus], summary="The GPU pool: which device is held by which session"
)
async def gpu_pool(manager: Annotated[SessionManager, Depends(deps.sessions)]) -> Envelope[GpuPoolStatus]:
    settings = manager.settings
    holders = {device: session_id for session_id, held in (await manager.store.gpu_holds()).items() for device in held}
    setting = settings.GPUS.value if isinstance(settings.GPUS, GpuMode) else ",".join(settings.GPUS)
    return Envelope(
        data=GpuPoolStatus(
            gpus=setting,
            per_run=settings.gpus_per_run if settings.gpu_pool else None,
            devices=[GpuDevice(id=d, session_id=holders.get(d)) for d in settings.gpu_pool],
        )
    )
