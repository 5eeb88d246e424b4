"""This server's identity on the Docker engine, and the lock that makes one process its dispatcher."""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import IO


class DispatchLock:
    """An exclusive flock on a file in SESSION_PATH: one dispatcher per session directory, held until exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        handle = open(self.path, "ab")  # noqa: SIM115 - stays open: the flock lasts as long as the file
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


def instance_id(session_path: Path) -> str:
    """A stable id for this session directory, labelled on its containers: other servers' are not ours."""
    marker = session_path / ".instance"
    with contextlib.suppress(FileNotFoundError):
        return marker.read_text().strip()
    candidate = session_path / f".instance.{uuid.uuid4().hex}"
    candidate.write_text(uuid.uuid4().hex)
    with contextlib.suppress(FileExistsError):
        os.link(candidate, marker)  # atomic: the first worker's id wins
    candidate.unlink()
    return marker.read_text().strip()
