"""Tar streams in and out of containers, in constant memory.

Docker's archive endpoints speak tar: `PUT /containers/{id}/archive` takes one, `GET` returns one.
A CT volume can be gigabytes, so we neither build nor parse archives in memory: tar_stream()
generates one on the fly (header, file chunks, padding) and extract_single_file() writes a
member's bytes to disk as they arrive.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self

import aiofiles
import aiofiles.os

from .filewriter import BlockWriter

BLOCK = tarfile.BLOCKSIZE  # 512
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # round-trips any file name bytes
_MAX_EXT_HEADER = 1 << 20  # PAX/GNU extension data is metadata; more than this is not a real archive


class ArchiveError(ValueError):
    """A tar stream we cannot or will not use."""


class NotARegularFile(ArchiveError):
    """The member asked for is a directory, link, device... anything but a plain file."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__(f"{name!r} {kind}, not a regular file")
        self.name = name
        self.kind = kind


class TruncatedArchive(ArchiveError):
    """The stream ended in the middle of a header or of a member's data."""


class EmptyArchive(ArchiveError):
    """The archive ended without any member."""


class SourceChanged(RuntimeError):
    """A file changed size while it was being streamed; the archive would be corrupt."""


class WriteFailed(Exception):
    """Writing the member to our own disk failed. Not an OSError on purpose: the stream's errors (the
    engine's connection) are OSErrors too, and the two must not be taken for each other."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"could not write {path}: {error.strerror or error}")
        self.path = path
        self.error = error


# Called with the member's size from its header and the bytes written so far: once before the first byte
# (written 0) and after each piece. It raises to refuse the member; the caller removes what was written.
SizeGuard = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class TarMember:
    arcname: str  # relative path inside the archive, e.g. "data/input.nii.gz"
    source: Path | None = None  # the file to stream; None makes a directory entry
    mode: int | None = None  # None: 0o644 for files, 0o1777 for directories

    def __post_init__(self) -> None:
        _check_arcname(self.arcname)
        if self.mode is None:
            object.__setattr__(self, "mode", 0o1777 if self.source is None else 0o644)


def _check_arcname(arcname: str) -> None:
    # Docker resolves members inside the container's filesystem: keep them under the target dir.
    parts = PurePosixPath(arcname).parts
    if not parts or arcname.startswith("/") or ".." in parts:
        raise ValueError(f"tar member name must be a relative path without '..': {arcname!r}")


def parents_of(path: str) -> list[str]:
    """The directory entries needed before `path`: "data/sub/x.nii" -> ["data", "data/sub"]."""
    parents = PurePosixPath(path).parents
    return [p.as_posix() for p in reversed(parents) if p.as_posix() != "."]


def _header(member: TarMember, st: os.stat_result | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.arcname)
    info.mode = member.mode if member.mode is not None else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = int(st.st_mtime if st is not None else time.time())
    if st is None or stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        raise ValueError(f"{member.source} is not a regular file or directory")
    return info


async def _file_chunks(source: Path, size: int, chunk_size: int) -> AsyncIterator[bytes]:
    """Exactly `size` bytes of `source`, or SourceChanged if it has a different length now."""
    remaining = size
    async with aiofiles.open(source, "rb") as f:
        while remaining:
            chunk = await f.read(min(chunk_size, remaining))
            if not chunk:
                raise SourceChanged(f"{source} shrank while streaming: {size - remaining} of {size} bytes")
            remaining -= len(chunk)
            yield chunk
        if await f.read(1):
            raise SourceChanged(f"{source} grew while streaming beyond its {size} bytes")


async def tar_stream(members: Sequence[TarMember], *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
    """A PAX tar archive of `members`, generated chunk by chunk (at most `chunk_size` bytes of file data)."""
    for member in members:
        st = await aiofiles.os.stat(member.source) if member.source is not None else None
        info = _header(member, st)
        # PAX: long names and sizes over 8 GiB go into an extended header instead of failing.
        yield info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS)
        if info.type != tarfile.REGTYPE:
            continue
        assert member.source is not None
        async for chunk in _file_chunks(member.source, info.size, chunk_size):
            yield chunk
        if padding := -info.size % BLOCK:
            yield bytes(padding)
    yield bytes(2 * BLOCK)  # end-of-archive marker


# ---------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Pulls exact byte counts out of an async chunk stream, holding at most one chunk."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = aiter(chunks)
        self._buf = b""
        self._pos = 0

    async def _fill(self) -> bool:
        """Make unread bytes available; False at end of stream."""
        while self._pos >= len(self._buf):
            try:
                self._buf = bytes(await anext(self._chunks))
            except StopAsyncIteration:
                return False
            self._pos = 0
        return True

    async def stream(self, n: int) -> AsyncIterator[bytes]:
        """The next `n` bytes, as slices of the incoming chunks."""
        while n:
            if not await self._fill():
                raise TruncatedArchive(f"tar stream ended {n} bytes early")
            end = min(len(self._buf), self._pos + n)
            piece = self._buf if (self._pos, end) == (0, len(self._buf)) else self._buf[self._pos : end]
            n -= end - self._pos
            self._pos = end
            yield piece

    async def read(self, n: int) -> bytes:
        """The next `n` bytes in one piece; only for headers and metadata, which are small."""
        out = bytearray()
        async for piece in self.stream(n):
            out += piece
        return bytes(out)

    async def at_eof(self) -> bool:
        return not await self._fill()


def _pax_records(data: bytes) -> dict[str, str]:
    """Parse PAX extended header records: "<len> <key>=<value>\\n" repeated."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ArchiveError("corrupt PAX extended header") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise ArchiveError("corrupt PAX extended header")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


_KINDS = {
    tarfile.DIRTYPE: "is a directory",
    tarfile.SYMTYPE: "is a symbolic link",
    tarfile.LNKTYPE: "is a hard link",
    tarfile.CHRTYPE: "is a character device",
    tarfile.BLKTYPE: "is a block device",
    tarfile.FIFOTYPE: "is a FIFO",
    tarfile.GNUTYPE_SPARSE: "is a sparse file",
}


async def _first_member(reader: _Reader) -> tarfile.TarInfo:
    """The first real member's header, with PAX and GNU long-name extensions applied."""
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        if await reader.at_eof():
            raise TruncatedArchive("tar stream ended before any member")
        block = await reader.read(BLOCK)
        if block.count(0) == BLOCK:
            raise EmptyArchive("tar archive has no member")
        try:
            info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
        except tarfile.HeaderError as exc:
            raise ArchiveError(f"corrupt tar header: {exc}") from None

        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if info.size > _MAX_EXT_HEADER:
                raise ArchiveError(f"tar extension header too large: {info.size} bytes")
            data = await reader.read(info.size + (-info.size % BLOCK))
            data = data[: info.size]
            if info.type == tarfile.XHDTYPE:
                pax.update(_pax_records(data))
            elif info.type == tarfile.XGLTYPE:
                global_pax.update(_pax_records(data))
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)
            continue  # GNU long link names only matter for links, which we refuse anyway

        overrides = {**global_pax, **pax}
        if "path" in overrides:
            info.name = overrides["path"]
        elif long_name is not None:
            info.name = long_name
        if "size" in overrides:
            try:
                info.size = int(overrides["size"])
            except ValueError:
                raise ArchiveError(f"bad PAX size {overrides['size']!r}") from None
        if info.type == tarfile.AREGTYPE and info.name.endswith("/"):
            info.type = tarfile.DIRTYPE  # old tars mark directories by a trailing slash only
        return info


class _LocalFile:
    """A BlockWriter whose OSErrors become WriteFailed naming `dest`."""

    def __init__(self, dest: Path) -> None:
        self._dest = dest
        self._writer = BlockWriter(dest)

    @property
    def size(self) -> int:
        return self._writer.size

    async def __aenter__(self) -> Self:
        with self._local():
            await self._writer.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._local():
            await self._writer.__aexit__(exc_type, exc, tb)

    async def write(self, piece: bytes) -> None:
        with self._local():
            await self._writer.write(piece)

    @contextmanager
    def _local(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise WriteFailed(self._dest, exc) from exc


async def extract_single_file(chunks: AsyncIterator[bytes], dest: Path, guard: SizeGuard | None = None) -> int:
    """Write the first member of the tar stream `chunks` to `dest` as it arrives; return its size.

    Made for `GET /containers/{id}/archive?path=<file>`. Reading stops after the member's data
    and padding; the caller closes the stream. `dest` is only opened once the member is known to
    be a regular file and `guard` has accepted its size. Errors writing `dest` raise WriteFailed;
    the caller removes a partly written `dest`.
    """
    reader = _Reader(chunks)
    info = await _first_member(reader)
    if info.type not in tarfile.REGULAR_TYPES or info.type == tarfile.GNUTYPE_SPARSE:
        kind = _KINDS.get(info.type, f"has unsupported tar type {info.type!r}")
        raise NotARegularFile(info.name.rstrip("/"), kind)
    if guard is not None:
        guard(info.size, 0)

    async with _LocalFile(dest) as out:
        async for piece in reader.stream(info.size):
            await out.write(piece)
            if guard is not None:
                guard(info.size, out.size)
    async for _ in reader.stream(-info.size % BLOCK):  # a missing padding means a cut stream too
        pass
    return out.size
