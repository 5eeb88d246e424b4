"""The wire envelope `{"data": ...}` / `{"errors": [{"detail": ...}]}` and the handlers that produce it."""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from ..observability.logs import printable
from ..sessions.errors import (
    AtCapacity,
    ChecksumMismatch,
    Conflict,
    Gone,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    SessionError,
    Stalled,
    TooLarge,
    WrongState,
)
from .auth import OPEN_PATHS

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    data: T


class ErrorDetail(BaseModel):
    detail: str = Field(description="A human-readable reason.", examples=["unknown session '…'"])


class ErrorEnvelope(BaseModel):
    errors: list[ErrorDetail]


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


STATUS_FOR: dict[type[SessionError], int] = {
    NotFound: 404,
    WrongState: 400,
    Conflict: 409,
    InvalidInput: 400,
    TooLarge: 413,
    InsufficientStorage: 507,
    AtCapacity: 503,
    Stalled: 408,
    Gone: 410,
    ChecksumMismatch: 460,  # tus 1.0's checksum extension
}


def error_response(status: int, *details: str) -> JSONResponse:
    return JSONResponse({"errors": [{"detail": d} for d in details]}, status_code=status)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entry documenting the error envelope for these statuses."""
    return {status: {"model": ErrorEnvelope} for status in statuses}


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return "/".join(parts) or "request body"


def _allowed_methods(request: Request) -> str:
    """Every method some route takes for this path (routers may be nested, so ask each by matching)."""
    scope = request.scope
    return ", ".join(
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in request.app.routes)
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail)

    @app.exception_handler(SessionError)
    async def _session_error(request: Request, exc: SessionError) -> JSONResponse:
        status = next(code for kind, code in STATUS_FOR.items() if isinstance(exc, kind))
        response = error_response(status, str(exc))
        if isinstance(exc, Stalled):  # the rest of its body may still trickle in: do not wait for it
            response.headers["Connection"] = "close"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [f"{_location(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()]
        return error_response(400, *details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response = error_response(exc.status_code, detail)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:  # Starlette names only the first route that matched the path
            response.headers["Allow"] = _allowed_methods(request)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette raises the exception on after this answer, so uvicorn still logs its traceback; the client
        # gets the envelope, not a plain-text page.
        return error_response(500, "internal server error; the server's log has the details")

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client left mid-body: an upload's partial file is already gone and the input still
        # needed. Nobody is left to read an answer; this one only keeps the log free of a traceback.
        logger.info(
            "%s %s: the client disconnected before its request body was complete",
            request.method,
            printable(request.url.path),
        )
        return Response(status_code=400)


UNAUTHORIZED = {
    "description": (
        "Access control is on (AUTH_USERS_FILE / AUTH_TOKENS_FILE) and the request carries no valid credential."
    ),
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
}


def install_openapi(app: FastAPI) -> None:
    """The schema as served: validation errors are 400s in the envelope (declared per route), never
    FastAPI's default 422, which this server does not send; every operation may answer 401 when
    access control is on."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            for route, path in schema.get("paths", {}).items():
                for operation in path.values():
                    responses = operation.setdefault("responses", {})
                    if responses.pop("422", None) is not None:  # our handler answers those as 400
                        responses.setdefault(
                            "400",
                            {
                                "description": "Bad request",
                                "content": {
                                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}
                                },
                            },
                        )
                    if route in OPEN_PATHS:
                        continue
                    responses["401"] = UNAUTHORIZED
                    operation["security"] = [{}, {"basic": []}, {"bearer": []}]  # {}: when access control is off
            schema.setdefault("components", {})["securitySchemes"] = {
                "basic": {"type": "http", "scheme": "basic", "description": "A user of AUTH_USERS_FILE."},
                "bearer": {"type": "http", "scheme": "bearer", "description": "A token of AUTH_TOKENS_FILE."},
            }
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its schema
