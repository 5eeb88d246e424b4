"""uvicorn's httptools protocol with a bound on a request's head, and malformed requests in the envelope.

httptools keeps however much header a client sends (64 MB of one header took 3.5 s and the memory
with it), and uvicorn answers a malformed request in plain text. `inferserver serve` runs this
subclass instead (by its import string, PROTOCOL): once the request line and headers pass MAX_HEADER_BYTES it answers 431 and
closes, and every protocol-level refusal carries the `{"errors": [{"detail": ...}]}` envelope.
It leans on uvicorn's HttpToolsProtocol internals (data_received, send_400_response, the parser
callbacks); tests/integration/test_hostile_input.py catches a uvicorn release that moves them.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import load_settings

# An import string, not the class: `serve --workers N` hands it to each worker process.
PROTOCOL = "inferserver.protocol:BoundedHttpToolsProtocol"
REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


@functools.cache
def _max_header_bytes() -> int:
    return load_settings().MAX_HEADER_BYTES  # once per process: serve has already checked the settings


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes = _max_header_bytes()
        self._in_head = True  # between a message's start and the end of its headers
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after parsing so a chunk that also holds body bytes of a finished head is not
        # held against it; the parser keeps at most one chunk (≤ 256 KiB) beyond the limit.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self.logger.warning("refused a request whose headers exceed %d bytes", self.max_header_bytes)
                self._refuse(431, f"request line and headers exceed the limit of {self.max_header_bytes} bytes")

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def _refuse(self, status: int, detail: str) -> None:
        body = json.dumps({"errors": [{"detail": detail}]}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

