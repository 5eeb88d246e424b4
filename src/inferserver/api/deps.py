"""Request-scoped access to the application's state (hung off `app.state` by the lifespan)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Request

from ..sessions.errors import Stalled
from ..sessions.manager import SessionManager
from ..sessions.quotas import progressing
from ..specs.directory import ModelDirectory
from .envelope import ApiError


# `async def`: FastAPI would run a plain `def` dependency in a worker thread, a hop on every request.
async def sessions(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.sessions  # app.state is untyped; the lifespan sets this
    return manager


async def models(request: Request) -> ModelDirectory:
    directory: ModelDirectory = request.app.state.models
    return directory


def content_length(request: Request) -> int | None:
    """The body size the client declared; None for a chunked body (or a header that is no number)."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole (small) body, or 413 naming the limit as soon as it is exceeded."""
    declared = content_length(request)
    if declared is not None and declared > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit} bytes")
    body = bytearray()
    # Small bodies stall like big ones: a client that stops sending must not hold its connection for ever.
    idle = request.app.state.settings.UPLOAD_IDLE_TIMEOUT
    async for chunk in progressing(request.stream(), idle, "request body", then="send the request again"):
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def drain(stream: AsyncIterator[bytes], idle_timeout: float) -> None:
    """Read what the client still sends, so it gets our answer rather than a reset connection; not from a
    client that stalls (it gets the answer now, and its connection closed)."""
    with contextlib.suppress(Stalled):
        async for _ in progressing(stream, idle_timeout, "request body"):
            pass


RAW_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
