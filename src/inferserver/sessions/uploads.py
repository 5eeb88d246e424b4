"""Receive an input file: stream it to a temporary name, hash and sniff as it comes, convert it when it is
another volume format than the input's, and rename it into place."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..runner.filewriter import BlockWriter
from ..volumes.convert import Converter
from ..volumes.errors import ConversionError, ConversionNoSpace, ConversionTooLarge
from ..volumes.sniff import SNIFF_BYTES, CheckResult, HeadCollector, check_filetype
from .errors import InsufficientStorage, InvalidInput, SessionError, TooLarge


@dataclass(frozen=True)
class UploadResult:
    sha256: str
    size: int


async def receive_file(
    chunks: AsyncIterator[bytes],
    dest: Path,
    *,
    label: str,
    expected_ext: str,
    check_types: bool,
    convert: bool = False,
    converter: Converter | None = None,
) -> UploadResult:
    """Write the body to `dest` atomically; a wrong file type or a broken body leaves `dest` untouched.

    `check_types` is CHECK_INPUT_FILETYPES, `convert` CONVERT_INPUTS; converting needs the process's `converter`.
    The sha256 is of the bytes received, also when `dest` holds their conversion.
    """
    if convert and converter is None:
        raise ValueError("convert=True needs the converter")
    partial = _partial_name(dest)
    head = HeadCollector()
    checked: CheckResult | None = None
    try:
        async with BlockWriter(partial, sha256=True) as out:
            async for chunk in chunks:
                if not head.complete and head.feed(chunk):
                    checked = check_head(head.head, label, expected_ext, check_types, convert)
                await out.write(chunk)
            if checked is None:  # a file shorter than the sniffing window
                checked = check_head(head.head, label, expected_ext, check_types, convert)
        await _place(partial, dest, checked, label, expected_ext, converter)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return UploadResult(sha256=out.sha256, size=out.size)


async def place_file(
    source: Path,
    dest: Path,
    *,
    sha256: str,
    label: str,
    expected_ext: str,
    check_types: bool,
    convert: bool = False,
    converter: Converter | None = None,
) -> UploadResult:
    """A file received in pieces elsewhere (a finished resumable upload) placed at `dest` as receive_file places
    a body: its head checked, then converted or moved in atomically. `source` stays as it is (it is hard-linked),
    so a refused or failed landing leaves the received bytes for another try."""
    if convert and converter is None:
        raise ValueError("convert=True needs the converter")
    head = await asyncio.to_thread(read_head, source)
    checked = check_head(head, label, expected_ext, check_types, convert)
    partial = _partial_name(dest)
    try:
        os.link(source, partial)
        await _place(partial, dest, checked, label, expected_ext, converter)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return UploadResult(sha256=sha256, size=os.stat(source).st_size)


def read_head(path: Path) -> bytes:
    """The first SNIFF_BYTES of a file (fewer when it is shorter)."""
    with path.open("rb") as stream:
        return stream.read(SNIFF_BYTES)


def _partial_name(dest: Path) -> Path:
    # The pid in the name lets a restarted server tell a dead upload's leftovers from a live one's.
    return dest.with_name(f".{dest.name}.upload-{os.getpid()}-{secrets.token_hex(4)}")


async def _place(
    partial: Path, dest: Path, checked: CheckResult, label: str, expected_ext: str, converter: Converter | None
) -> None:
    """Convert `partial` into `dest` when its check says so, else rename it there."""
    if checked.can_convert and checked.filetype is not None and converter is not None:  # implies convert
        try:
            await converter.convert_upload(partial, checked.filetype, dest, label)
        except ConversionError as exc:
            raise _refusal(exc, checked.filetype, expected_ext) from exc
        os.unlink(partial)
    else:
        os.replace(partial, dest)


def _refusal(exc: ConversionError, found: str, expected_ext: str) -> SessionError:
    """The session error (400, 413 or 507) for a conversion that did not happen; its message names the file."""
    if isinstance(exc, ConversionTooLarge):
        return TooLarge(str(exc))
    if isinstance(exc, ConversionNoSpace):
        return InsufficientStorage(str(exc))
    return InvalidInput(f"{exc} (the upload claims to be {found}; it cannot be converted to {expected_ext})")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_local_owner(owner: str | None) -> bool:
    """Whether an upload claim's owner (`host:pid:token`) is a process of this host that no longer exists."""
    if owner is None:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid))


def partial_owner_pid(partial: Path, mark: str = ".upload-") -> int | None:
    """The pid of the process writing a partial file (from its name after `mark`), if it has one."""
    _, _, tail = partial.name.rpartition(mark)
    pid, _, _ = tail.partition("-")
    return int(pid) if pid.isdigit() else None


def check_head(head: bytes, label: str, expected_ext: str, check_types: bool, convert: bool) -> CheckResult:
    result = check_filetype(head, expected_ext, check=check_types, convert=convert)
    if not result.acceptable:
        found = result.filetype or "an unknown type"
        raise InvalidInput(f"{label} must be a {expected_ext} file, but the upload is {found}")
    return result
