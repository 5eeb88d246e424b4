"""What clients may put on the server: upload size and pace, the session disk's free-space reserve, live sessions.

Each refusal names the limit, so the user knows what to ask the operator for.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..sizes import human_size, rough_size
from .errors import AtCapacity, InsufficientStorage, Stalled, TooLarge

# A chunked upload does not say how big it is: the free space is looked at again after each this many bytes
# (a statvfs is cheap; concurrent uploads can overshoot the reserve by this much each).
DISK_CHECK_BYTES = 8 << 20
OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT}
POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full
# An upload must bring this many bytes in each UPLOAD_IDLE_TIMEOUT of waiting for them: a body that trickles
# in a byte a second is as stuck as one that stopped, and holds its input's claim as long.
PROGRESS_BYTES = 16 << 10


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    disk_reserve: int
    disk: Path  # any path on the session disk
    idle_timeout: float = 60.0  # UPLOAD_IDLE_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(
            settings.MAX_UPLOAD_BYTES, settings.DISK_RESERVE_BYTES, settings.SESSION_PATH, settings.UPLOAD_IDLE_TIMEOUT
        )

    def check_disk(self, label: str, coming: int) -> None:
        """InsufficientStorage when `coming` more bytes would leave less free than the reserve."""
        check_disk(self.disk, self.disk_reserve, label, coming)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_disk(disk: Path, reserve: int, label: str, coming: int) -> None:
    """InsufficientStorage when `coming` more bytes on `disk` would leave less free than `reserve`."""
    free = free_bytes(disk)
    if free - coming < reserve:
        raise InsufficientStorage(
            f"not enough disk space for {label}: the server keeps {human_size(reserve)} free "
            f"(DISK_RESERVE_BYTES) and has {rough_size(free)} free"
        )


def out_of_space(exc: BaseException) -> bool:
    """The error says a disk is full: a file write (ENOSPC, EDQUOT), SQLite ("database or disk is full") or
    PostgreSQL (SQLSTATE 53100), also when wrapped by SQLAlchemy (its `orig`)."""
    for error in (exc, getattr(exc, "orig", None)):
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
            return True
        if error is None:
            continue
        if POSTGRES_DISK_FULL in (getattr(error, "sqlstate", None), getattr(error, "pgcode", None)):
            return True
        if "database or disk is full" in str(error):
            return True
    return False


@contextlib.contextmanager
def out_of_space_is_507(label: str) -> Iterator[None]:
    """A full disk while doing `label` becomes InsufficientStorage (507) naming DISK_RESERVE_BYTES, not a 500."""
    try:
        yield
    except Exception as exc:
        if not out_of_space(exc):
            raise
        raise InsufficientStorage(
            f"not enough disk space for {label}: the disk is full (DISK_RESERVE_BYTES is the free space the server "
            "keeps on SESSION_PATH's disk; the operator must free space)"
        ) from exc


async def limited_upload(
    chunks: AsyncIterator[bytes], declared: int | None, limits: UploadLimits, label: str
) -> AsyncIterator[bytes]:
    """`chunks` passed through until the upload breaks a limit, then TooLarge, InsufficientStorage or Stalled.

    With a Content-Length (`declared`) both size limits are decided before the first byte is taken; either
    way they are checked again as the bytes arrive. The receiver removes its partial file on the error.
    """
    over = f"{label} is over the upload limit of {human_size(limits.max_bytes)} (MAX_UPLOAD_BYTES)"
    if declared is not None and declared > limits.max_bytes:
        raise TooLarge(f"{over}: its Content-Length is {declared} bytes")
    limits.check_disk(label, declared if declared is not None else DISK_CHECK_BYTES)
    received = 0
    next_disk_check = DISK_CHECK_BYTES
    async for chunk in progressing(chunks, limits.idle_timeout, label):
        received += len(chunk)
        if received > limits.max_bytes:
            raise TooLarge(over)
        if received >= next_disk_check:
            # Other uploads share the disk: what was free at the start may be gone now.
            limits.check_disk(label, max(declared - received, 0) if declared is not None else DISK_CHECK_BYTES)
            next_disk_check = received + DISK_CHECK_BYTES
        yield chunk


async def progressing(
    chunks: AsyncIterator[bytes],
    idle_timeout: float,
    label: str,
    then: str = "it was dropped and the input can be uploaded again",
) -> AsyncIterator[bytes]:
    """`chunks` passed through while at least PROGRESS_BYTES come in each `idle_timeout` s spent waiting for
    them; then Stalled (its message: `label`, what happened, `then`). Only the wait counts: time the receiver
    spends writing is not the client's."""
    iterator = aiter(chunks)
    waited, window = 0.0, 0
    while True:
        started = time.monotonic()
        try:
            async with asyncio.timeout(idle_timeout - waited):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise Stalled(
                f"{label}: the upload sent less than {PROGRESS_BYTES // 1024} KiB in {idle_timeout:g} s "
                f"(UPLOAD_IDLE_TIMEOUT); {then}"
            ) from None
        waited += time.monotonic() - started
        window += len(chunk)
        if window >= PROGRESS_BYTES:
            waited, window = 0.0, 0
        yield chunk


def check_room(live: int, limit: int) -> None:
    """AtCapacity when `live` sessions (not complete or failed) already fill the `limit`."""
    if live >= limit:
        raise at_capacity(limit)


def at_capacity(limit: int) -> AtCapacity:
    return AtCapacity(
        f"the server holds its limit of {limit} live sessions (MAX_SESSIONS); try again once some have finished"
    )
