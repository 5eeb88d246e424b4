"""Receive an input file: stream it to a temporary name, hash and sniff as it comes, convert it when it is
another volume format than the input's, and rename it into place."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ..convert import ConversionError, convert_upload
from ..filetypes import CheckResult, HeadCollector, check_filetype
from ..filewriter import BlockWriter
from .errors import InvalidInput


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
    checked: CheckResult | None = None
    try:
        async with BlockWriter(partial, sha256=True) as out:
            async for chunk in chunks:
                if not head.complete:
                    head.feed(chunk)
                    if head.complete:
                        checked = _check(head.head, label, expected_ext, check_types, convert)
                await out.write(chunk)
            if checked is None:  # a file shorter than the sniffing window
                checked = _check(head.head, label, expected_ext, check_types, convert)
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
    return UploadResult(sha256=out.sha256, size=out.size)


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
