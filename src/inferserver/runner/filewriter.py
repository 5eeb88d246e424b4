"""Write a stream of chunks to a file from a worker thread, one block behind the stream.

Uploads and outputs staged out of a container arrive in 64-256 KiB pieces. Writing each through
aiofiles costs a thread hop per piece, and hashing on the event loop took half its time during an
upload. BlockWriter gathers pieces into blocks and hashes and writes each block in a worker thread
(sha256 and write(2) release the GIL) while the loop goes on receiving the next one. The pieces are
written with writev as they came, never joined.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, Self

# Gather pieces into blocks this big before handing them to the thread: fewer thread hops.
WRITE_BLOCK = 1 << 20
# writev takes at most this many buffers per call (a chunked body may come one byte per chunk).
IOV_MAX = os.sysconf("SC_IOV_MAX")


class Hasher(Protocol):
    """A hashlib object, as far as BlockWriter feeds it."""

    def update(self, data: bytes, /) -> None: ...


class BlockWriter:
    """`async with BlockWriter(path) as out: await out.write(piece)`; `out.sha256` and `out.size` after.

    At most one block is in flight while the next one fills, so memory stays at about two blocks.
    A write error surfaces at the next `write` or at the end of the `async with`.
    With `start` the file is kept up to that offset (cut back to it if longer) and written from there, as a
    resumed upload is; `hashers` are fed every piece too, in the same thread (a chunk's checksum, the running
    hash of a resumed file).
    """

    def __init__(
        self, path: Path, *, sha256: bool = False, start: int | None = None, hashers: Sequence[Hasher] = ()
    ) -> None:
        self._path = path
        self._digest = hashlib.sha256() if sha256 else None
        self._start = start
        self._hashers = [*hashers, *([self._digest] if self._digest is not None else [])]
        self._fd = -1
        self._block: list[bytes] = []
        self._block_size = 0
        self._pending: asyncio.Future[None] | None = None
        self.size = 0

    async def __aenter__(self) -> Self:
        if self._start is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        else:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.ftruncate(self._fd, self._start)  # bytes past the acknowledged offset were never acknowledged
            os.lseek(self._fd, self._start, os.SEEK_SET)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                await self._flush()
            await self._settle()
        finally:
            pending, fd = self._pending, self._fd
            if pending is None:
                os.close(fd)
            else:  # cancelled while a block is still being written: close once the thread is done with it
                pending.add_done_callback(_closer(fd))

    async def write(self, piece: bytes) -> None:
        self._block.append(piece)
        self._block_size += len(piece)
        self.size += len(piece)
        if self._block_size >= WRITE_BLOCK:
            await self._flush()

    async def sync(self) -> None:
        """Write what is gathered and fsync: every byte written so far is on disk when this returns."""
        await self._flush()
        await self._settle()
        await asyncio.get_running_loop().run_in_executor(None, os.fsync, self._fd)

    @property
    def sha256(self) -> str:
        if self._digest is None:
            raise AttributeError("this BlockWriter was made without sha256=True")
        return self._digest.hexdigest()

    async def _flush(self) -> None:
        if not self._block:
            return
        await self._settle()
        block, self._block, self._block_size = self._block, [], 0
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._hash_and_write, block)

    async def _settle(self) -> None:
        if self._pending is not None:
            # Shielded: a cancelled caller must not close the file under a thread that is still writing it.
            await asyncio.shield(self._pending)
            self._pending = None

    def _hash_and_write(self, pieces: list[bytes]) -> None:
        for hasher in self._hashers:
            for piece in pieces:
                hasher.update(piece)
        for start in range(0, len(pieces), IOV_MAX):
            _write_all(self._fd, [memoryview(piece) for piece in pieces[start : start + IOV_MAX]])


def _closer(fd: int) -> Callable[[asyncio.Future[None]], None]:
    """A done callback that closes `fd`, having retrieved the block's exception (so asyncio does not log it)."""

    def close(done: asyncio.Future[None]) -> None:
        if not done.cancelled():
            done.exception()
        os.close(fd)

    return close


def _write_all(fd: int, views: list[memoryview]) -> None:
    """writev until every byte is written: a regular file may take fewer bytes than asked."""
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]
