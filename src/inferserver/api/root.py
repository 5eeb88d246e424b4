"""`GET /`: who we are; the ablinfer client refuses any server that is not `inferserver`."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from .. import __version__
from .envelope import Envelope

router = APIRouter(tags=["server"])


class ServerInfo(BaseModel):
    server: Literal["inferserver"] = "inferserver"
    version: str


@router.get("/", response_model=Envelope[ServerInfo], summary="Identify the server")
async def root() -> Envelope[ServerInfo]:
    return Envelope(data=ServerInfo(version=__version__))
