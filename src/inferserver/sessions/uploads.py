"""Receive an input file: stream it to a temporary name, hash and sniff as it comes, convert it when it is
another volume format than the input's, and rename it into place."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..runner.filewriter import BlockWriter
from ..volumes.convert import Converter
from ..volumes.errors import ConversionError, ConversionNoSpace, ConversionTooLarge
from ..volumes.sniff import CheckResult, HeadCollector, check_filetype
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
    # The pid in the name lets a restarted server tell a dead upload's leftovers from a live one's.
    partial = dest.with_name(f".{dest.name}.upload-{os.getpid()}-{secrets.token_hex(4)}")
    head = HeadCollector()
    checked: CheckResult | None = None
    try:
        async with BlockWriter(partial, sha256=True) as out:
            async for chunk in chunks:
                if not head.complete and head.feed(chunk):
                    checked = _check(head.head, label, expected_ext, check_types, convert)
                await out.write(chunk)
            if checked is None:  # a file shorter than the sniffing window
                checked = _check(head.head, label, expected_ext, check_types, convert)
        if checked.can_convert and checked.filetype is not None and converter is not None:  # implies convert
            try:
                await converter.convert_upload(partial, checked.filetype, dest, label)
            except ConversionError as exc:
                raise _refusal(exc, checked.filetype, expected_ext) from exc
            partial.unlink()
        else:
            os.replace(partial, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return UploadResult(sha256=out.sha256, size=out.size)


def _refusal(exc: ConversionError, found: str, expected_ext: str) -> SessionError:
    """The session error (400, 413 or 507) for a conversion that did not happen; its message names the file."""
    if isinstance(exc, ConversionTooLarge):
        return TooLarge(str(exc))
    if isinstance(exc, ConversionNoSpace):
        return InsufficientStorage(str(exc))
    return InvalidInput(f"{exc} (the upload claims to be {found}; it cannot be converted to {expected_ext})")


def partial_owner_pid(partial: Path, mark: str = ".upload-") -> int | None:
    """The pid of the process writing a partial file (from its name after `mark`), if it has one."""
    _, _, tail = partial.name.rpartition(mark)
    pid, _, _ = tail.partition("-")
    return int(pid) if pid.isdigit() else None


def _check(head: bytes, label: str, expected_ext: str, check_types: bool, convert: bool) -> CheckResult:
    result = check_filetype(head, expected_ext, check=check_types, convert=convert)
    if not result.acceptable:
        found = result.filetype or "an unknown type"
        raise InvalidInput(f"{label} must be a {expected_ext} file, but the upload is {found}")
    return result
