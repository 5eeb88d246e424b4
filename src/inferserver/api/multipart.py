"""A `multipart/form-data` upload read as a stream: the one file part's bytes, as they arrive.

python-multipart's push parser is fed straight from the request body, so the file is never spooled
into memory or a temporary file the way Starlette's form parser does; what comes out goes down the
same path as a raw-body upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..sessions.errors import InvalidInput

if TYPE_CHECKING:  # python_multipart defines its callbacks' TypedDict for type checkers only
    from python_multipart.multipart import MultipartCallbacks

MULTIPART = b"multipart/form-data"


def is_multipart(content_type: str | None) -> bool:
    return parse_options_header(content_type or "")[0] == MULTIPART


class _Parts:
    """Parser callbacks: collect the file part's data; refuse a second part."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.parts = 0
        self.header_name = b""
        self.header_value = b""
        self.disposition = b""
        self.ended = False

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > 1:
            raise InvalidInput("multipart upload: send exactly one part, the file")
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        kind, options = parse_options_header(self.disposition)
        if kind != b"form-data" or b"filename" not in options:
            raise InvalidInput(
                "multipart upload: the part must be a file (Content-Disposition: form-data; filename=...)"
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.data.append(data[start:end])

    def on_end(self) -> None:
        self.ended = True


async def file_part(content_type: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the file part's bytes; InvalidInput for a body that is not one complete file part."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart upload: the Content-Type has no boundary")
    parts = _Parts()
    callbacks: MultipartCallbacks = {
        "on_part_begin": parts.on_part_begin,
        "on_header_field": parts.on_header_field,
        "on_header_value": parts.on_header_value,
        "on_header_end": parts.on_header_end,
        "on_headers_finished": parts.on_headers_finished,
        "on_part_data": parts.on_part_data,
        "on_end": parts.on_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in body:
            parser.write(chunk)
            if parts.data:
                yield b"".join(parts.data)
                parts.data.clear()
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(f"multipart upload: not a valid multipart/form-data body ({exc})") from exc
    if parts.data:
        yield b"".join(parts.data)
    if not parts.ended or parts.parts == 0:
        raise InvalidInput("multipart upload: the body ended before the closing boundary")
