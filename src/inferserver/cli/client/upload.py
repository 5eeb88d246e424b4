"""Uploading an input: through tus when the server offers it (resumable), else one plain PUT (retried whole)."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.progress import Progress

from . import tus
from .connection import check
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
        tus.TusUpload(client, server, path, f"input {name}", advance, restart_at, retries).send(session_id, name)
    else:
        _put(client, session_id, name, path, size, advance, restart_at, retries)
    progress.update(task, completed=size)


def _put(
    client: httpx.Client,
    session_id: str,
    name: str,
    path: Path,
    size: int,
    advance: tus.Advance,
    restart_at: tus.Advance,
    retries: Retries,
) -> None:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    while True:
        try:
            body = pieces(path, 0, size, advance)
            response = client.put(f"sessions/{session_id}/inputs/{name}", headers=headers, content=body)
            break
        except httpx.TransportError as exc:  # the server drops a broken upload: the input is free to send again
            retries.failed(f"upload of input {name}", exc)
            restart_at(0)
    check(response, f"upload of input {name}")
