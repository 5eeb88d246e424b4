"""Uploading an input: through tus when the server offers it (resumable), else one plain PUT (retried whole)."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.progress import Progress

from . import tus
from .connection import check
from .errors import ClientError
from .files import pieces
from .retry import Retries


def upload_input(
    client: httpx.Client,
    session_id: str,
    name: str,
    path: Path,
    progress: Progress,
    server: tus.TusServer | None,
    retries: Retries,
    tag: str = "",
) -> None:
    size = path.stat().st_size
    task = progress.add_task(f"{tag}upload {name}", total=size)

    def advance(count: int) -> None:
        progress.advance(task, count)

    def restart_at(offset: int) -> None:
        progress.update(task, completed=offset)

    if server is not None:
        upload = tus.TusUpload(client, server, path, f"input {name}", advance, restart_at, retries)
        answered = upload.send(session_id, name)
    else:
        answered = _put(client, session_id, name, path, size, advance, restart_at, retries)
    progress.update(task, completed=size)
    # End to end: what the server stored is what was read here, resumes included.
    if answered is not None and answered != tus.sha256_of(path, 0, size).hex():
        raise ClientError(f"upload of input {name}: the server stored sha256 {answered}, the file {path} differs")


def _put(
    client: httpx.Client,
    session_id: str,
    name: str,
    path: Path,
    size: int,
    advance: tus.Advance,
    restart_at: tus.Advance,
    retries: Retries,
) -> str | None:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    while True:
        try:
            body = pieces(path, 0, size, advance)
            response = client.put(f"sessions/{session_id}/inputs/{name}", headers=headers, content=body)
            break
        except httpx.TransportError as exc:  # the server drops a broken upload: the input is free to send again
            retries.failed(f"upload of input {name}", exc)
            restart_at(0)
    data = check(response, f"upload of input {name}").json().get("data") or {}
    return str(data["sha256"]) if "sha256" in data else None
