"""`/models`: the model directory, session creation, and the pre-upload file type check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ..sessions.manager import SessionManager
from ..specs.directory import ModelDirectory
from ..specs.model import ModelSpec
from ..specs.runconfig import SessionRequest
from ..volumes.sniff import check_filetype
from . import deps
from .bodies import CHECK_TYPES, BoundedJsonRoute, require_media_type
from .envelope import ApiError, Envelope, error_responses
from .identity import Identity, identity
from .paths import InputName, ModelId, shown

router = APIRouter(prefix="/models", tags=["models"])

CHECK_LIMIT = 4096  # the client sends at most 1024 bytes; anything far beyond is not a header

Models = Annotated[ModelDirectory, Depends(deps.models)]
Sessions = Annotated[SessionManager, Depends(deps.sessions)]


class SessionCreated(BaseModel):
    session_id: str = Field(examples=["9b2f6a0e-3c1d-4e5f-8a7b-1c2d3e4f5a6b"])


class FiletypeCheck(BaseModel):
    filetype: str | None = Field(
        description="Type sniffed from the header, e.g. .nii.gz; null when unknown.", examples=[".nii.gz"]
    )
    acceptable: bool = Field(description="Whether an upload of this file will be accepted.", examples=[True])
    can_convert: bool = Field(description="Whether the server would convert it to the expected type.", examples=[False])


def spec_of(directory: ModelDirectory, model_id: str) -> ModelSpec:
    loaded = directory.models.get(model_id)
    if loaded is None:
        raise ApiError(404, f"unknown model {shown(model_id)}")
    return loaded.spec


class ModelList(Envelope[list[str]]):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": ["copy", "temporal_bone"]}]})


@router.get("", response_model=ModelList, summary="List the model ids")
async def list_models(directory: Models) -> ModelList:
    return ModelList(data=sorted(directory.models))


@router.get(
    "/{model_id}",
    # Documented as the typed spec, answered as the raw normalized dict: re-validating would add the
    # optional fields ablinfer's load_model leaves out, and the client compares what it gets.
    response_model=None,
    responses={200: {"model": Envelope[ModelSpec], "description": "The normalized spec."}, **error_responses(404)},
    summary="A model's spec, upgraded to json_version 1.3 and normalized as ablinfer does",
)
async def get_model(model_id: ModelId, directory: Models) -> dict[str, Any]:
    return {"data": spec_of(directory, model_id).wire()}


async def create_session(
    model_id: ModelId, body: SessionRequest, manager: Sessions, caller: Annotated[Identity, Depends(identity)]
) -> Envelope[SessionCreated]:
    return Envelope(data=SessionCreated(session_id=await manager.create(model_id, body, owner=caller.user)))


# Added by hand: only add_api_route takes a route class, and this route bounds its JSON body.
router.add_api_route(
    "/{model_id}",
    create_session,
    methods=["POST"],
    response_model=Envelope[SessionCreated],
    responses=error_responses(400, 404, 413, 415, 503, 507),
    summary="Create a session with this run configuration",
    description="503 when the server already holds MAX_SESSIONS live sessions; 507 when SESSION_PATH's disk has less "
    "than DISK_RESERVE_BYTES free.",
    route_class_override=BoundedJsonRoute,
    strict_content_type=False,  # a body without Content-Type is read as JSON; other types are 415 (bodies.py)
)


@router.post(
    "/{model_id}/inputs/{name}/check",
    response_model=Envelope[FiletypeCheck],
    responses=error_responses(404, 413, 415),
    openapi_extra=deps.RAW_BODY,
    summary="Check the first bytes (at most 4096) of a file about to be uploaded",
)
async def check_input(
    model_id: ModelId, name: InputName, request: Request, directory: Models
) -> Envelope[FiletypeCheck]:
    spec = spec_of(directory, model_id)
    if name not in spec.inputs:
        raise ApiError(404, f"model {model_id} has no input {shown(name)}")
    require_media_type(request, CHECK_TYPES)
    header = await deps.read_limited(request, CHECK_LIMIT)
    settings = request.app.state.settings
    result = check_filetype(
        header, spec.inputs[name].extension, check=settings.CHECK_INPUT_FILETYPES, convert=settings.CONVERT_INPUTS
    )
    return Envelope(
        data=FiletypeCheck(filetype=result.filetype, acceptable=result.acceptable, can_convert=result.can_convert)
    )
