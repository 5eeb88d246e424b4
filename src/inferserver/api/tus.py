"""`/uploads`: resumable uploads of an input by the tus 1.0.0 protocol (core, creation, termination, checksum,
expiration). The protocol's state lives in sessions/tusuploads.py; this module reads and writes its headers.

Every answer carries `Tus-Resumable`; errors are in the envelope (HEAD's without a body). The `Location` of a new
upload is relative (`uploads/<id>`): resolved against the creation URL it names the upload behind any path prefix.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from ..sessions.errors import SessionError
from ..sessions.tusuploads import CHECKSUMS, Checksum, PatchResult, TusUploads
from . import deps
from .bodies import media_type
from .envelope import STATUS_FOR, ApiError, error_response, error_responses
from .paths import UUID_FORM, plain, shown

VERSION = "1.0.0"
EXTENSIONS = "creation,termination,checksum,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
SHA256_HEADER = "Inferserver-Sha256"  # the finished file's sha256, as PUT's answer has it in its body


class TusRoute(APIRoute):
    """Checks Tus-Resumable (412 with Tus-Version otherwise; OPTIONS needs none) and puts it on every answer,
    errors included: they are turned into responses here, where the header can still be added."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def tus(request: Request) -> Response:
            try:
                if request.method != "OPTIONS" and request.headers.get("tus-resumable") != VERSION:
                    got = request.headers.get("tus-resumable")
                    raise _TusRefusal(
                        412,
                        f"Tus-Resumable must be {VERSION}; this request "
                        + ("has none" if got is None else f"asks for {shown(got)}"),
                        {"Tus-Version": VERSION},
                    )
                return await handler(request)
            except _TusRefusal as exc:
                return _refusal(request, exc.status, exc.detail, exc.headers)
            except ApiError as exc:
                return _refusal(request, exc.status, exc.detail)
            except HTTPException as exc:
                return _refusal(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))
            except SessionError as exc:
                status = next(code for kind, code in STATUS_FOR.items() if isinstance(exc, kind))
                headers = {"Connection": "close"} if status == 408 else {}
                return _refusal(request, status, str(exc), headers)

        return tus


class _TusRefusal(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _refusal(request: Request, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    all_headers = {"Tus-Resumable": VERSION, "Cache-Control": "no-store", **(headers or {})}
    if request.method == "HEAD":  # a HEAD answer has no body (tus: the status alone says it)
        return Response(status_code=status, headers=all_headers)
    response = error_response(status, detail)
    response.headers.update(all_headers)
    return response


router = APIRouter(prefix="/uploads", tags=["uploads"], route_class=TusRoute)


async def _tus(request: Request) -> TusUploads:
    tus: TusUploads = request.app.state.tus
    return tus


Tus = Annotated[TusUploads, Depends(_tus)]


def _header(name: str, description: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "schema": {"type": "string"},
        "description": description,
    }


def _documented(*headers: str) -> dict[str, Any]:
    return {name: {"schema": {"type": "string"}, "description": f"The tus {name} header."} for name in headers}


RESUMABLE = _header("Tus-Resumable", f"Must be {VERSION}; anything else is 412 with Tus-Version.")
UPLOAD_ID = {
    "name": "upload_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "description": "The upload's id (the last part of the Location its creation answered).",
}
# A HEAD answer never has a body, its errors neither.
HEAD_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "headers": _documented("Tus-Resumable")}
    for code, text in [
        (404, "Unknown or terminated upload."),
        (410, "The upload expired (TUS_EXPIRY)."),
        (412, "Unsupported Tus-Resumable."),
    ]
}


@router.options(
    "",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "What this server speaks.", "headers": _documented("Tus-Version")}},
    summary="The tus protocol versions, extensions, maximum size and checksum algorithms this server supports",
)
async def tus_options(request: Request) -> Response:
    settings = request.app.state.settings
    return Response(
        status_code=204,
        headers={
            "Tus-Resumable": VERSION,
            "Tus-Version": VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Max-Size": str(settings.MAX_UPLOAD_BYTES),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
        },
    )


@router.post(
    "",
    status_code=201,
    response_class=Response,
    responses={
        201: {"description": "Created; PATCH its bytes to Location.", "headers": _documented("Location")},
        **error_responses(400, 404, 412, 413, 507),
    },
    openapi_extra={
        "parameters": [
            RESUMABLE,
            _header("Upload-Length", "The file's size in bytes (at most MAX_UPLOAD_BYTES, else 413)."),
            _header(
                "Upload-Metadata",
                "Comma-separated `key base64(value)` pairs: `session_id` and `input` (required), `filename`.",
            ),
        ]
    },
    summary="Create a resumable upload of one input of a waiting session",
    description="Answers a relative Location (`uploads/<id>`) and Upload-Expires. 404 for an unknown session or input,"
    " 400 for one the session does not wait for, 413 over MAX_UPLOAD_BYTES, 507 when the disk, counting the bytes "
    "other unfinished uploads still announce, would fall under DISK_RESERVE_BYTES.",
)
async def create_upload(request: Request, tus: Tus) -> Response:
    length = _number(request, "Upload-Length")
    if length < 1:
        raise ApiError(400, "Upload-Length must be at least 1 byte")
    metadata = _metadata(request.headers.get("upload-metadata"))
    session_id = metadata.get("session_id", "").lower()
    if not UUID_FORM.fullmatch(session_id):
        raise ApiError(404, "unknown session: Upload-Metadata's session_id must be a session's UUID")
    name = metadata.get("input", "")
    if not plain(name):
        raise ApiError(404, "unknown input: Upload-Metadata's input must name an input of the session")
    filename = metadata.get("filename")
    if filename is not None and not plain(filename):
        raise ApiError(400, "Upload-Metadata: filename must be a plain file name of at most 255 printable characters")
    row = await tus.create(session_id, name, length, filename)
    return Response(
        status_code=201,
        headers={"Tus-Resumable": VERSION, "Location": f"uploads/{row.id}", "Upload-Expires": _http_date(row.expires)},
    )


@router.head(
    "/{upload_id}",
    response_class=Response,
    responses={
        200: {
            "description": "The upload's offset and length.",
            "headers": _documented("Upload-Offset", "Upload-Length", "Tus-Resumable"),
        },
        **HEAD_ERRORS,
    },
    openapi_extra={"parameters": [UPLOAD_ID, RESUMABLE]},
    summary="How many bytes of the upload the server has (resume from Upload-Offset)",
)
async def upload_offset(upload_id: str, tus: Tus) -> Response:
    row = await tus.get(upload_id)
    return Response(
        status_code=200,
        headers={
            "Tus-Resumable": VERSION,
            "Upload-Offset": str(row.received),
            "Upload-Length": str(row.length),
            "Upload-Expires": _http_date(row.expires),
            "Cache-Control": "no-store",
        },
    )


@router.patch(
    "/{upload_id}",
    status_code=204,
    response_class=Response,
    responses={
        204: {
            "description": f"Stored; the new Upload-Offset. The PATCH that completes the upload makes the file the "
            f"session's input (as PUT does) and answers its sha256 in {SHA256_HEADER}.",
            "headers": _documented("Upload-Offset", "Tus-Resumable"),
        },
        **error_responses(400, 404, 408, 409, 410, 412, 413, 415, 460, 507),
    },
    openapi_extra={
        "parameters": [
            UPLOAD_ID,
            RESUMABLE,
            _header("Upload-Offset", "Where this chunk starts: the offset HEAD answers (else 409)."),
            _header(
                "Upload-Checksum",
                "`sha1 <base64>` or `sha256 <base64>` of this chunk (460 when wrong).",
                required=False,
            ),
        ],
        "requestBody": {
            "required": True,
            "content": {OFFSET_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    summary="Append a chunk at Upload-Offset (fsynced and recorded before the answer)",
)
async def patch_upload(upload_id: str, request: Request, tus: Tus) -> Response:
    raw = request.stream()
    idle = request.app.state.settings.UPLOAD_IDLE_TIMEOUT
    try:
        if media_type(request) != OFFSET_TYPE:
            raise ApiError(415, f"Content-Type must be {OFFSET_TYPE}")
        offset = _number(request, "Upload-Offset")
        checksum = _checksum(request.headers.get("upload-checksum"))
    except ApiError:
        await deps.drain(raw, idle)
        raise
    body = _Started(raw)
    try:
        result: PatchResult = await tus.patch(upload_id, offset, body, deps.content_length(request), checksum)
    except SessionError:
        if not body.started:  # refused before reading: let the client read the answer, not a reset
            await deps.drain(raw, idle)
        raise
    headers = {
        "Tus-Resumable": VERSION,
        "Upload-Offset": str(result.offset),
        "Upload-Expires": _http_date(result.expires),
    }
    if result.sha256 is not None:
        headers[SHA256_HEADER] = result.sha256
        request.app.state.metrics.uploaded.inc(result.offset)
    return Response(status_code=204, headers=headers)


@router.delete(
    "/{upload_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Terminated: its bytes are gone."}, **error_responses(404, 410, 412)},
    openapi_extra={"parameters": [UPLOAD_ID, RESUMABLE]},
    summary="Terminate an upload and remove what it received",
)
async def terminate_upload(upload_id: str, tus: Tus) -> Response:
    await tus.terminate(upload_id)
    return Response(status_code=204, headers={"Tus-Resumable": VERSION})


class _Started:
    """The body, remembering whether any of it was read."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks
        self.started = False

    def __aiter__(self) -> _Started:
        return self

    async def __anext__(self) -> bytes:
        self.started = True
        chunk: bytes = await anext(self._chunks)
        return chunk


def _number(request: Request, header: str) -> int:
    value = request.headers.get(header)
    if value is None or not value.isdigit() or not value.isascii():
        raise ApiError(
            400, f"{header} must be a non-negative integer" + ("" if value is None else f", not {shown(value)}")
        )
    return int(value)


def _metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata: `key base64value` pairs separated by commas (tus creation extension)."""
    if not header:
        raise ApiError(400, "Upload-Metadata is required: it must name session_id and input")
    values: dict[str, str] = {}
    for pair in header.split(","):
        key, _, encoded = pair.strip().partition(" ")
        try:
            values[key] = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(400, f"Upload-Metadata: the value of {shown(key)} is not base64 of UTF-8 text") from None
    return values


def _checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise ApiError(
            400, f"Upload-Checksum: algorithm {shown(algorithm)} is not supported (use {', '.join(CHECKSUMS)})"
        )
    try:
        return Checksum(algorithm, base64.b64decode(encoded.strip(), validate=True))
    except binascii.Error:
        raise ApiError(400, "Upload-Checksum: the checksum is not base64") from None


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)
