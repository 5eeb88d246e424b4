"""Path parameters checked before any lookup: a session id is a UUID, a name is short and plain.

Whatever a client puts in a URL is refused here with a 404 unless it can only ever name something
inside the server's own tables, so nothing past this point meets `..`, a slash, a NUL or a 1 MB name,
and the refusal does not repeat it.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path

from .envelope import ApiError

# The canonical form only: uuid.UUID() would also take `{...}`, `urn:uuid:` and hex without dashes.
UUID_FORM = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAX_NAME = 255
SHOWN = 64  # how much of a refused value an error message repeats


def shown(value: str) -> str:
    """The value quoted for an error message: control characters escaped, long ones cut."""
    return repr(value if len(value) <= SHOWN else value[:SHOWN] + "…")


def plain(value: str) -> bool:
    """A name that cannot leave a directory or hide in a log line."""
    return (
        0 < len(value) <= MAX_NAME
        and value not in (".", "..")
        and not any(c in "/\\" or not c.isprintable() for c in value)
    )


# The dependencies are `async def` although they never wait: FastAPI runs a plain `def` dependency in a
# worker thread, a thread hop on every request.
async def _session_id(
    session_id: Annotated[str, Path(description="The session's UUID.", json_schema_extra={"format": "uuid"})],
) -> str:
    canonical = session_id.lower()
    if not UUID_FORM.fullmatch(canonical):
        raise ApiError(404, "unknown session: a session id is a UUID")
    return canonical


def _plain_or_404(kind: str, value: str) -> str:
    if not plain(value):
        # Not repeated back: it may be a path, a control character or megabytes long.
        raise ApiError(404, f"unknown {kind}: not a valid name")
    return value


async def _model_id(model_id: str) -> str:
    return _plain_or_404("model", model_id)


async def _input_name(name: str) -> str:
    return _plain_or_404("input", name)


async def _output_name(name: str) -> str:
    return _plain_or_404("output", name)


SessionId = Annotated[str, Depends(_session_id)]
ModelId = Annotated[str, Depends(_model_id)]
InputName = Annotated[str, Depends(_input_name)]
OutputName = Annotated[str, Depends(_output_name)]
