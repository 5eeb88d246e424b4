"""The wire envelope `{"data": ...}` / `{"errors": [{"detail": ...}]}` and the handlers that produce it."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..sessions.errors import (
    AtCapacity,
    Conflict,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    SessionError,
    TooLarge,
    WrongState,
)

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
}


def error_response(status: int, *details: str) -> JSONResponse:
    return JSONResponse({"errors": [{"detail": d} for d in details]}, status_code=status)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entry documenting the error envelope for these statuses."""
    return {status: {"model": ErrorEnvelope} for status in statuses}


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "path", "query", "header")]
    return "/".join(parts) or "request body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail)

    @app.exception_handler(SessionError)
    async def _session_error(request: Request, exc: SessionError) -> JSONResponse:
        status = next(code for kind, code in STATUS_FOR.items() if isinstance(exc, kind))
        return error_response(status, str(exc))

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
        return response
