"""`/sessions`: status, uploads, the live log, and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from ..sessions.errors import InvalidInput
from ..sessions.manager import SessionManager
from ..sessions.quotas import UploadLimits, limited_upload
from ..sessions.state import Status
from ..volumes import convert
from ..volumes.errors import ConversionError, ConversionNoSpace, ConversionTooLarge
from . import accel, deps
from .bodies import UPLOAD_TYPES, require_media_type
from .envelope import ApiError, Envelope, error_responses
from .identity import OPERATORS_ONLY, Identity, identity
from .multipart import file_part, is_multipart
from .paths import InputName, OutputName, SessionId

router = APIRouter(prefix="/sessions", tags=["sessions"])


class VolumeResponse(FileResponse):
    """Starlette reads files in 64 KiB pieces, a thread hop each; volumes are big: 1 MiB pieces."""

    chunk_size = 1 << 20

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # Starlette answers a bad Range in plain text; raised as HTTPException it reaches the envelope handler.
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            raise HTTPException(400, f"Range header: {exc.content.removeprefix('Range header: ')}") from None
        except RangeNotSatisfiable as exc:
            raise HTTPException(
                416,
                f"Range header: no range starts within the file's {exc.max_size} bytes",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from None


Sessions = Annotated[SessionManager, Depends(deps.sessions)]


class SessionStatus(BaseModel):
    status: Status = Field(description="waiting, ready, working, complete or failed.", examples=["working"])
    needed: list[str] = Field(description="Inputs still to be uploaded.", examples=[[]])
    info: str = Field(description="The reason for a failure, or a note on progress.", examples=["running"])


class UploadReceived(BaseModel):
    sha256: str = Field(
        description="Hex SHA-256 of the bytes received.",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )


# The multipart form has its own operation: one operation with two body types trips generated clients
# (openapi-python-client 0.29 emits code that does not import). Either route takes either body.
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "description": "The input file."}},
                    "required": ["file"],
                },
            },
        },
    }
}
LOG_EXAMPLE = "Waiting, position in queue is 1\ncopy: wrote /data/output_vol.nii.gz\n"


@router.get(
    "/{session_id}",
    response_model=Envelope[SessionStatus],
    responses=error_responses(404),
    summary="A session's status",
)
async def get_session(session_id: SessionId, manager: Sessions) -> Envelope[SessionStatus]:
    status, needed, info = await manager.describe(session_id)
    return Envelope(data=SessionStatus(status=status, needed=list(needed), info=info))


@router.delete(
    "/{session_id}",
    response_model=Envelope[SessionStatus],
    responses=error_responses(403, 404, 409, 507),
    summary="Cancel a waiting, queued or running session (it ends failed, info `cancelled`)",
    description="With access control on, a user may cancel the sessions they created; an operator any session "
    "(403 otherwise).",
)
async def cancel_session(
    session_id: SessionId, manager: Sessions, caller: Annotated[Identity, Depends(identity)]
) -> Envelope[SessionStatus]:
    if not caller.operator:
        await manager.view(session_id)  # 404 for an unknown session before anything is said about its owner
        if caller.user is None or await manager.owner(session_id) != caller.user:
            raise ApiError(403, OPERATORS_ONLY.format(what="cancel another user's session"))
    view = await manager.cancel(session_id)
    return Envelope(data=SessionStatus(status=view.status, needed=view.needed, info=view.row.info))


@router.put(
    "/{session_id}/inputs/{name}",
    response_model=Envelope[UploadReceived],
    responses=error_responses(400, 404, 408, 409, 413, 415, 507),
    openapi_extra=deps.RAW_BODY,
    summary="Upload an input file as the raw request body (streamed to disk)",
    description="413 when it is over MAX_UPLOAD_BYTES; 507 when it would leave less than DISK_RESERVE_BYTES free.",
)
async def put_input(
    session_id: SessionId, name: InputName, request: Request, manager: Sessions
) -> Envelope[UploadReceived]:
    return await _upload(session_id, name, request, manager)


@router.post(
    "/{session_id}/inputs/{name}",
    response_model=Envelope[UploadReceived],
    responses=error_responses(400, 404, 408, 409, 413, 415, 507),
    openapi_extra=MULTIPART_BODY,
    summary="Upload an input file as the one file part of a multipart/form-data body (streamed, never spooled)",
)
async def post_input(
    session_id: SessionId, name: InputName, request: Request, manager: Sessions
) -> Envelope[UploadReceived]:
    return await _upload(session_id, name, request, manager)


async def _upload(session_id: str, name: str, request: Request, manager: SessionManager) -> Envelope[UploadReceived]:
    require_media_type(request, UPLOAD_TYPES)
    raw = request.stream()
    # The limits hold for the request body as it comes, so a Content-Length over them is refused up front.
    limits = UploadLimits.from_settings(request.app.state.settings)
    body = limited_upload(raw, deps.content_length(request), limits, label=f"input {name}")
    content_type = request.headers.get("content-type")
    chunks = file_part(content_type or "", body) if is_multipart(content_type) else body
    try:
        result = await manager.upload(session_id, name, chunks)
    except InvalidInput:
        await deps.drain(raw, limits.idle_timeout)
        raise
    request.app.state.metrics.uploaded.inc(result.size)
    return Envelope(data=UploadReceived(sha256=result.sha256))


@router.get(
    "/{session_id}/logs",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}, "example": LOG_EXAMPLE}},
            "description": "The log, line by line; a line holding only NUL is a keep-alive.",
        },
        **error_responses(400, 404),
    },
    summary="Follow the run's log until the run has ended",
)
async def get_logs(session_id: SessionId, manager: Sessions) -> StreamingResponse:
    stream = await manager.log_stream(session_id)
    # X-Accel-Buffering: NGINX must pass each line on as it comes.
    return StreamingResponse(stream, media_type="text/plain; charset=utf-8", headers={"X-Accel-Buffering": "no"})


@router.get(
    "/{session_id}/outputs/{name}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The output file's bytes.",
        },
        **error_responses(400, 404, 413, 507),
    },
    summary="Download an output file, byte for byte as the model wrote it, or converted to another format",
    description="Behind a proxy that sends `X-Accel-Mapping: <SESSION_PATH>/=<URI prefix>` (the shipped NGINX site "
    "does) the answer has an empty body and `X-Accel-Redirect: <URI prefix><session>/outputs/<file>`, and the "
    "proxy sends the file.",
)
async def get_output(
    session_id: SessionId,
    name: OutputName,
    request: Request,
    manager: Sessions,
    target: Annotated[
        str | None,
        Query(
            alias="format",
            description=f"Convert a volume to one of {', '.join(convert.FORMATS)} (needs the convert extra); "
            "verified first, converted once (concurrent requests wait for it), then served from a cache beside the "
            "output. 413 over MAX_CONVERT_BYTES or CONVERT_TIMEOUT, 507 when the result would eat into "
            "DISK_RESERVE_BYTES.",
        ),
    ] = None,
) -> Response:
    path = await manager.output_file(session_id, name)
    filename = path.name
    if target is not None:
        path = await _converted(manager, path, name, target)
        filename = f"{name}{convert.format_of(path)}"
    request.app.state.metrics.downloaded.inc(path.stat().st_size)
    # application/octet-stream and no Content-Encoding: the client must save the .nii.gz as it is.
    response = VolumeResponse(path, media_type="application/octet-stream", filename=filename)
    uri = accel.redirect_uri(request.headers.get(accel.HEADER), path, request.app.state.settings.SESSION_PATH)
    return response if uri is None else accel.redirected(response, uri)


async def _converted(manager: SessionManager, path: Path, name: str, target: str) -> Path:
    target = target.lower()
    if target not in convert.FORMATS:
        raise ApiError(400, f"format {target!r} is not supported: ask for one of {', '.join(convert.FORMATS)}")
    source = convert.format_of(path)
    if source is None:
        raise ApiError(400, f"output {name} is a {path.name} file; only {', '.join(convert.FORMATS)} outputs convert")
    if source != target and not convert.available():
        raise ApiError(400, f"conversion is not installed on this server ({convert.INSTALL_HINT})")
    try:
        return await manager.converter.converted_copy(path, target, f"output {name}")
    except ConversionTooLarge as exc:
        raise ApiError(413, str(exc)) from exc
    except ConversionNoSpace as exc:
        raise ApiError(507, str(exc)) from exc
    except ConversionError as exc:
        raise ApiError(400, f"output {name} cannot be converted to {target}: {exc}") from exc
