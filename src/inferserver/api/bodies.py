"""Request bodies: the content types each endpoint takes, and JSON read with a size limit.

FastAPI reads a JSON body whole before any dependency runs, so the limit sits in a route class:
the body is read in bounded steps (413 as soon as it passes MAX_JSON_BYTES) and handed to FastAPI
already read, so the request model, its validation and its OpenAPI schema stay FastAPI's own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from .deps import read_limited
from .envelope import ApiError

JSON_TYPES = ("application/json",)
# The ablinfer client sends application/octet-stream; curl -T and many scripts send no type at all.
UPLOAD_TYPES = ("application/octet-stream", "multipart/form-data")  # raw body, or one file part
# `check` sniffs the body's first bytes as they are: a multipart body would be sniffed by its boundary line.
CHECK_TYPES = ("application/octet-stream",)


def media_type(request: Request) -> str | None:
    """The Content-Type without parameters, lower case; None when the request has none."""
    value = request.headers.get("content-type")
    if value is None or not value.strip():
        return None
    return value.split(";", 1)[0].strip().lower()


def require_media_type(request: Request, accepted: Collection[str]) -> None:
    """415 naming what is expected, unless the type is one of `accepted`, a `+json` kind of an
    accepted JSON type, or missing (a body without a type is taken as the expected kind)."""
    kind = media_type(request)
    if kind is None or kind in accepted:
        return
    if "application/json" in accepted and kind.startswith("application/") and kind.endswith("+json"):
        return
    raise ApiError(415, f"Content-Type must be {' or '.join(accepted)}, not {kind}")


class _ReadRequest(Request):
    """A request whose body was already read (within the limit) by the route."""

    def __init__(self, request: Request, body: bytes) -> None:
        super().__init__(request.scope, request.receive)
        self._body = body  # Starlette's own cache of the body: FastAPI's body() returns it


class BoundedJsonRoute(APIRoute):
    """A route whose JSON body must be application/json and at most MAX_JSON_BYTES."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            require_media_type(request, JSON_TYPES)
            body = await read_limited(request, request.app.state.settings.MAX_JSON_BYTES)
            return await handler(_ReadRequest(request, body))

        return bounded
