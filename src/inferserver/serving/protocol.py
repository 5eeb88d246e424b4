"""uvicorn's httptools protocol with a bound on a request's head, in size and in time, and malformed requests
in the envelope.

httptools keeps however much header a client sends (64 MB of one header took 3.5 s and the memory
with it), uvicorn waits for ever for a head that never ends (half-open connections pile up until the
process runs out of file descriptors), and uvicorn answers a malformed request in plain text. `inferserver
serve` runs this subclass instead (by its import string, PROTOCOL; the shipped gunicorn config hands it to
its uvicorn workers too): a request line plus headers over MAX_HEADER_BYTES is answered 431 and closed, a
head not complete within HEADER_TIMEOUT seconds of its first byte (or of the connection) is answered 408 and
closed, and every protocol-level refusal carries the `{"errors": [{"detail": ...}]}` envelope.
It leans on uvicorn's HttpToolsProtocol internals (data_received, send_400_response, the parser
callbacks); tests/integration/test_hostile_input.py and test_slow_clients.py catch a uvicorn release that
moves them.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import load_settings

# An import string, not the class: `serve --workers N` hands it to each worker process.
PROTOCOL = "inferserver.serving.protocol:BoundedHttpToolsProtocol"
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF around each header the parser hands over without them


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head over the limit (httptools passes it on)."""


@functools.cache
def _head_limits() -> tuple[int, float]:
    # Once per process: serve has already checked the settings.
    settings = load_settings()
    return settings.MAX_HEADER_BYTES, settings.HEADER_TIMEOUT


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_header_bytes, self.header_timeout = _head_limits()
        self._in_head = True  # between a message's start and the end of its headers
        self._head_bytes = 0  # bytes received while in the head (a bound on what the parser buffers)
        self._parsed_head_bytes = 0  # the head as parsed: request line and headers
        self._head_timer: asyncio.TimerHandle | None = None
        self._too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn narrows it
        super().connection_made(transport)
        self._start_head_timer()  # a connection that never sends a byte is a head that never ends

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._parsed_head_bytes = True, 0, 0
        if self._head_timer is None:  # a keep-alive connection's next request: its own time for its head
            self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_parsed(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_parsed(len(name) + len(value) + HEADER_LINE_OVERHEAD)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # A whole head within one read (a 70,000-byte head fits in one) is caught by the parser callbacks;
        # this catches one header growing over many reads, which httptools buffers before any callback.
        # Counted after parsing so a chunk that also holds body bytes of a finished head is not held against
        # it; the parser keeps at most one chunk (≤ 256 KiB) beyond the limit.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_too_large()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # our own callback stopped the parser: not a malformed request
            self._refuse_too_large()
        else:
            self._refuse(400, msg)

    def _count_parsed(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self.max_header_bytes:
            self._too_large = True
            raise HeadTooLarge  # httptools turns it into a parser error; send_400_response answers 431

    def _refuse_too_large(self) -> None:
        self.logger.warning("refused a request whose headers exceed %d bytes", self.max_header_bytes)
        self._refuse(
            431, f"request line and headers exceed the limit of {self.max_header_bytes} bytes (MAX_HEADER_BYTES)"
        )

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head waits while the request before it is answered: time it again afterwards.
            self._start_head_timer()
            return
        self.logger.info("closed a connection whose request head was not complete within %g s", self.header_timeout)
        self._refuse(
            408, f"the request line and headers did not arrive within {self.header_timeout:g} s (HEADER_TIMEOUT)"
        )

    def _refuse(self, status: int, detail: str) -> None:
        self._stop_head_timer()
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
