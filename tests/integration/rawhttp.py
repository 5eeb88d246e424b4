"""Raw HTTP/1.1 over a socket, for requests no well-behaved client library will send."""

from __future__ import annotations

import json
import select
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def detail(self) -> str:
        """The envelope's details joined; fails unless the body is the error envelope."""
        envelope = json.loads(self.body)
        assert set(envelope) == {"errors"} and envelope["errors"], envelope
        return " | ".join(e["detail"] for e in envelope["errors"])


def connect(url: str, timeout: float = 30) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    return sock


def read_response(sock: socket.socket) -> RawResponse:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a whole response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(status, headers, body[:length])


def request(url: str, head: bytes, body: bytes = b"") -> RawResponse:
    """Send `head` (request line and headers, without the blank line) and `body`; read the answer."""
    data = memoryview(head + b"\r\nConnection: close\r\n\r\n" + body)
    with connect(url) as sock:
        # In slices, stopping once the server answers: it may refuse and close before reading it all,
        # and writing on would reset the connection and lose its answer.
        for start in range(0, len(data), 1 << 16):
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(data[start : start + (1 << 16)])
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_response(sock)
