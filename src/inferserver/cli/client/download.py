"""Downloading an output with a progress bar: to a hidden partial file, resumed with Range after a dropped
connection, renamed into place only when complete."""

from __future__ import annotations

from pathlib import Path

import httpx
from rich.progress import Progress, TaskID

from .connection import check, transient, transient_error
from .errors import TransientError
from .files import finish, partial_name
from .retry import Retries


def download_output(
    client: httpx.Client,
    session_id: str,
    name: str,
    target: Path,
    progress: Progress,
    retries: Retries,
    tag: str = "",
) -> None:
    partial = partial_name(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    task = progress.add_task(f"{tag}download {name}", total=None)
    url = f"sessions/{session_id}/outputs/{name}"
    try:
        written = _fetch(client, url, name, partial, progress, task, retries)
    except BaseException:
        partial.unlink(missing_ok=True)  # no half file is left to look like an output
        raise
    finish(partial, target)
    progress.update(task, total=written, completed=written)


def _fetch(
    client: httpx.Client, url: str, name: str, partial: Path, progress: Progress, task: TaskID, retries: Retries
) -> int:
    written = 0
    with partial.open("wb") as out:
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            try:
                with client.stream("GET", url, headers=headers) as response:
                    if transient(response):
                        raise transient_error(response, "GET")
                    check(response, f"download of output {name}")
                    if written and response.status_code != 206:  # the server sent it all again
                        out.seek(0)
                        out.truncate()
                        written = 0
                    size = _total(response, written)
                    progress.update(task, total=size, completed=written)
                    for data in response.iter_bytes():
                        out.write(data)
                        written += len(data)
                        progress.update(task, completed=written)
                    if size is not None and written < size:
                        raise httpx.RemoteProtocolError(f"{written} of {size} bytes arrived")
                return written
            except (httpx.TransportError, TransientError) as exc:
                retries.failed(f"download of output {name}", exc)


def _total(response: httpx.Response, already: int) -> int | None:
    """The whole file's size: from Content-Range on a 206, else Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range:
        whole = content_range.rsplit("/", 1)[1]
        return int(whole) if whole.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None
