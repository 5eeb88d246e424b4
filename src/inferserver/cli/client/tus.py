"""A small tus 1.0.0 client (core, creation, checksum) over httpx: resumes from the server's offset after a
dropped connection or a server restart.

tuspy would fit the protocol, but it is built on requests; one HTTP client, one set of credentials and
errors, is simpler than two.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from .connection import check, transient, transient_error
from .errors import ClientError, Exit
from .files import pieces
from .retry import Retries

VERSION = "1.0.0"
ENDPOINT = "uploads"
Advance = Callable[[int], None]
SHA256_HEADER = "Inferserver-Sha256"  # the finished input's sha256, as a PUT's answer holds it
CHUNK = 64 << 20  # bytes per PATCH: what the server's README recommends; a drop re-sends at most this much


@dataclass(frozen=True)
class TusServer:
    """What the server's tus offers, and the chunk size the client sends it in."""

    max_size: int | None
    # Send Upload-Checksum (sha256) with each chunk: the server can check it. Off by default: a chunk with a
    # checksum that breaks off is discarded whole (its checksum cannot be checked), so a dropped connection
    # sends it all again; the finished file's sha256 is compared end to end either way.
    checksum: bool
    chunk: int = CHUNK


def offered(client: httpx.Client, chunk: int = CHUNK, checksum: bool = False) -> TusServer | None:
    """The server's tus support (OPTIONS /uploads), or None when it has none: the caller then uses PUT."""
    response = client.options(ENDPOINT)
    if response.status_code in (401, 403):
        check(response, "OPTIONS /uploads")
    versions = response.headers.get("Tus-Version", "")
    if not response.is_success or VERSION not in [v.strip() for v in versions.split(",")]:
        return None
    extensions = {e.strip() for e in response.headers.get("Tus-Extension", "").split(",")}
    if "creation" not in extensions:
        return None
    algorithms = {a.strip() for a in response.headers.get("Tus-Checksum-Algorithm", "").split(",")}
    size = response.headers.get("Tus-Max-Size")
    if checksum and not ("checksum" in extensions and "sha256" in algorithms):
        raise ClientError("--checksum: the server's tus does not check sha256 checksums", Exit.USAGE)
    return TusServer(int(size) if size and size.isdigit() else None, checksum, chunk)


def _metadata(values: dict[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


def sha256_of(path: Path, start: int, length: int) -> bytes:
    digest = hashlib.sha256()
    for data in pieces(path, start, length, lambda _: None):
        digest.update(data)
    return digest.digest()


@dataclass
class TusUpload:
    client: httpx.Client
    server: TusServer
    path: Path
    label: str  # e.g. "input ct", for messages
    advance: Advance  # bytes sent
    restart_at: Advance  # the server's offset after a resume: progress goes back to it
    retries: Retries
    sha256: str | None = None  # the finished input's, as the completing PATCH answers it

    def send(self, session_id: str, name: str) -> str | None:
        """Upload the file; the sha256 the server answered for the finished input (None from a server that
        does not say)."""
        size = self.path.stat().st_size
        if self.server.max_size is not None and size > self.server.max_size:
            raise ClientError(f"{self.label}: {self.path} is {size} bytes, over the server's Tus-Max-Size")
        location = self._create(session_id, name, size)
        offset = 0  # an upload of 0 bytes is complete once created
        self.sha256 = None
        while offset < size:
            try:
                reached = self._patch(location, offset, size)
            except httpx.TransportError as exc:
                self.retries.failed(f"upload of {self.label}", exc)
                reached = self._resume_offset(location)
            if reached > offset:
                self.retries.progressed()
            offset = reached
        return self.sha256

    def _create(self, session_id: str, name: str, size: int) -> str:
        metadata = {"session_id": session_id, "input": name, "filename": self.path.name}
        headers = {"Tus-Resumable": VERSION, "Upload-Length": str(size), "Upload-Metadata": _metadata(metadata)}
        while True:
            try:
                response = self.client.post(ENDPOINT, headers=headers)
                break
            except httpx.TransportError as exc:
                self.retries.failed(f"creating the upload of {self.label}", exc)
        check(response, f"creating the upload of {self.label}")
        location = response.headers.get("Location")
        if not location:
            raise ClientError(f"creating the upload of {self.label}: the server answered no Location")
        return str(response.url.join(location))  # relative or absolute, behind a path prefix too

    def _patch(self, location: str, offset: int, size: int) -> int:
        length = min(self.server.chunk, size - offset)
        headers = {
            "Tus-Resumable": VERSION,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
            "Content-Length": str(length),
        }
        if self.server.checksum:
            headers["Upload-Checksum"] = f"sha256 {base64.b64encode(sha256_of(self.path, offset, length)).decode()}"
        body = pieces(self.path, offset, length, self.advance)
        response = self.client.patch(location, headers=headers, content=body)
        if response.status_code == 460:  # the chunk arrived damaged and was discarded: send it again
            self.restart_at(offset)
            self.retries.failed(f"upload of {self.label}", ClientError("checksum mismatch (460)"))
            return offset
        if response.status_code == 409 or transient(response):
            # 409: not the server's offset, or the dropped PATCH is still being closed; 502-504: a proxy whose
            # server restarts. Either way the server's offset says where to go on.
            self.retries.failed(f"upload of {self.label}", transient_error(response, "PATCH"))
            return self._resume_offset(location)
        check(response, f"upload of {self.label}")
        self.sha256 = response.headers.get(SHA256_HEADER, self.sha256)
        return int(response.headers.get("Upload-Offset", offset + length))

    def _resume_offset(self, location: str) -> int:
        """The offset the server has acknowledged (HEAD); retried while the server cannot be reached."""
        while True:
            try:
                response = self.client.head(location, headers={"Tus-Resumable": VERSION})
            except httpx.TransportError as exc:
                self.retries.failed(f"resuming the upload of {self.label}", exc)
                continue
            if transient(response):
                self.retries.failed(f"resuming the upload of {self.label}", transient_error(response, "HEAD"))
                continue
            check(response, f"resuming the upload of {self.label}")
            answered = response.headers.get("Upload-Offset", "")
            if not answered.isdigit():
                raise ClientError(f"resuming the upload of {self.label}: the server answered no Upload-Offset")
            offset = int(answered)
            self.restart_at(offset)
            return offset
