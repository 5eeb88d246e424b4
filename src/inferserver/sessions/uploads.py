"""Receive an input file: stream it to a temporary name, hash and sniff as it comes, convert it when it is
another volume format than the input's, and rename it into place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncio

from ..convert import ConversionError, convert_upload
from ..filetypes import CheckResult, HeadCollector, check_filetype
from .errors import InvalidInput

# Gather request chunks into blocks this big before handing them to the writer thread: fewer thread hops.
WRITE_BLOCK = 1 << 20
# writev takes at most this many buffers per call (a chunked body may come one byte per chunk).
IOV_MAX = os.sysconf("SC_IOV_MAX")


@dataclass(frozen=True)
class UploadResult:
    sha256: str
    size: int


async def receive_file(
    chunks: AsyncIterator[bytes], dest: Path, *, label: str, expected_ext: str, check_types: bool, convert: bool
) -> UploadResult:
    """Write the body to `dest` atomically; a wrong file type or a broken body leaves `dest` untouched.

    `check_types` is CHECK_INPUT_FILETYPES, `convert` CONVERT_INPUTS. The sha256 is of the bytes received,
    also when `dest` holds their conversion.
    """
    # The pid in the name lets a restarted server tell a dead upload's leftovers from a live one's.
    partial = dest.with_name(f".{dest.name}.upload-{os.getpid()}-{secrets.token_hex(4)}")
    head = HeadCollector()
    size = 0
    block: list[bytes] = []
    block_size = 0
    checked: CheckResult | None = None
    try:
        async with BlockWriter(partial) as out:
            async for chunk in chunks:
                if not head.complete:
                    head.feed(chunk)
                    if head.complete:
                        checked = _check(head.head, label, expected_ext, check_types, convert)
                size += len(chunk)
                block.append(chunk)
                block_size += len(chunk)
                if block_size >= WRITE_BLOCK:
                    await out.write(block)
                    block, block_size = [], 0
            if checked is None:  # a file shorter than the sniffing window
                checked = _check(head.head, label, expected_ext, check_types, convert)
            if block:
                await out.write(block)
        if checked.can_convert and checked.filetype is not None:
            try:
                await convert_upload(partial, checked.filetype, dest)
            except ConversionError as exc:
                raise InvalidInput(f"{label}: the upload claims to be {checked.filetype} but cannot be converted to {expected_ext}: {exc}") from exc
            partial.unlink()
        else:
            os.replace(partial, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return UploadResult(sha256=out.sha256, size=size)


class BlockWriter:
    """Hashes and writes blocks of chunks in a worker thread, one block in flight while the next one fills.

    sha256 and write(2) both release the GIL, so the event loop goes on receiving while a block is hashed
    and written: hashing on the loop held uploads to about a third of what uvicorn can take in. The chunks
    are written with writev as they came, never joined.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._digest = hashlib.sha256()
        self._fd = -1
        self._pending: asyncio.Future[None] | None = None

    async def __aenter__(self) -> BlockWriter:
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._settle()
        finally:
            pending, fd = self._pending, self._fd
            if pending is None:
                os.close(fd)
            else:  # cancelled while a block is still being written: close once the thread is done with it
                pending.add_done_callback(lambda done: (done.cancelled() or done.exception(), os.close(fd)))

    async def write(self, chunks: list[bytes]) -> None:
        """Start writing `chunks` once the block before them is written; a write error surfaces here or at exit."""
        await self._settle()
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._hash_and_write, chunks)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    async def _settle(self) -> None:
        if self._pending is not None:
            # Shielded: a cancelled upload must not close the file under a thread that is still writing it.
            await asyncio.shield(self._pending)
            self._pending = None

    def _hash_and_write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._digest.update(chunk)
        for start in range(0, len(chunks), IOV_MAX):
            _write_all(self._fd, [memoryview(chunk) for chunk in chunks[start:start + IOV_MAX]])


def _write_all(fd: int, views: list[memoryview]) -> None:
    """writev until every byte is written: a regular file may take fewer bytes than asked."""
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def partial_owner_pid(partial: Path) -> int | None:
    """The pid of the process writing a partial upload file (from its name), if it has one."""
    _, _, tail = partial.name.rpartition(".upload-")
    pid, _, _ = tail.partition("-")
    return int(pid) if pid.isdigit() else None


def _check(head: bytes, label: str, expected_ext: str, check_types: bool, convert: bool) -> CheckResult:
    result = check_filetype(head, expected_ext, check=check_types, convert=convert)
    if not result.acceptable:
        found = result.filetype or "an unknown type"
        raise InvalidInput(f"{label} must be a {expected_ext} file, but the upload is {found}")
    return result
