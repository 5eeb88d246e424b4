"""A few tus 1.0.0 requests written out by hand (what tuspy does not let a test see or break), for the tus tests."""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = "application/offset+octet-stream"


def metadata(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def new_session(base_url: str, model_id: str = "copy") -> str:
    answer = httpx.post(f"{base_url}/models/{model_id}", json={"inputs": {}, "params": {}, "outputs": {}})
    assert answer.status_code == 200, answer.text
    session_id: str = answer.json()["data"]["session_id"]
    return session_id


def create(base_url: str, session_id: str, length: int, name: str = "input_vol") -> httpx.Response:
    return httpx.post(
        f"{base_url}/uploads",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(session_id=session_id, input=name)},
    )


def created(base_url: str, session_id: str, length: int, name: str = "input_vol") -> str:
    """A new upload's absolute URL (its Location resolved against the creation URL, as clients do)."""
    answer = create(base_url, session_id, length, name)
    assert answer.status_code == 201, answer.text
    return urljoin(f"{base_url}/uploads", answer.headers["location"])


def offset(url: str) -> int:
    answer = httpx.head(url, headers=TUS)
    assert answer.status_code == 200, answer.status_code
    return int(answer.headers["upload-offset"])


def patch(url: str, at: int, chunk: bytes, checksum: str | None = None, timeout: float = 120) -> httpx.Response:
    headers = {**TUS, "Content-Type": OFFSET_TYPE, "Upload-Offset": str(at)}
    if checksum is not None:
        digest = hashlib.new(checksum, chunk).digest()
        headers["Upload-Checksum"] = f"{checksum} {base64.b64encode(digest).decode()}"
    return httpx.patch(url, content=chunk, headers=headers, timeout=timeout)


def patch_file(url: str, source: Path, at: int, chunk_size: int) -> httpx.Response:
    """PATCH the rest of `source` from `at` in chunks; the last answer."""
    with source.open("rb") as stream:
        stream.seek(at)
        while chunk := stream.read(chunk_size):
            answer = patch(url, at, chunk)
            assert answer.status_code == 204, answer.text
            at = int(answer.headers["upload-offset"])
    return answer


def start_patch(url: str, at: int, declared: int, first: bytes, checksum: bytes | None = None) -> socket.socket:
    """A PATCH whose head says `declared` body bytes and of which only `first` has been sent, on an open socket
    (`checksum`: a sha1 digest for its Upload-Checksum)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    extra = "" if checksum is None else f"Upload-Checksum: sha1 {base64.b64encode(checksum).decode()}\r\n"
    head = (
        f"PATCH {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nTus-Resumable: 1.0.0\r\n{extra}"
        f"Content-Type: {OFFSET_TYPE}\r\nUpload-Offset: {at}\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock
