"""Conversion between .nrrd, .nii and .nii.gz, the server's side: verify the header, check the limits and the
disk, then let a limited child process (worker.py) do the work; one conversion per output at a time.

The server never reads more of a volume than its header (nrrd.py, nifti.py), so its memory stays flat whatever
a file claims. The child has an address-space, CPU-time and file-size limit and a wall-clock timeout; a failed or
killed conversion leaves no file: partials carry `.convert-<pid>-` (outputs) or sit under an upload's partial
name (inputs), which the janitor removes once their process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConversionError, ConversionTooLarge
from .verify import FORMATS, TRAILING_SLACK, Volume, format_of, read_header
from .worker import KINDS, Job

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "FORMATS",
    "INSTALL_HINT",
    "ConversionError",
    "ConvertLimits",
    "Converter",
    "available",
    "convertible",
    "format_of",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'inferserver[convert]'"
PARTIAL_MARK = ".convert-"  # in the name of an output conversion's partial file, followed by the server's pid
CHILD_MEMORY_BASE = 768 << 20  # Python and SimpleITK themselves (about 420 MiB of address space), plus room
IMPORT_PROBE = 60  # seconds the one-time `import SimpleITK` probe may take (0.15 s here)
LOCK_POLL = 0.05  # seconds between tries of a busy lock (flock has no async wait)


@functools.cache
@functools.cache
def available() -> bool:
    """Whether SimpleITK can be imported (asked once per process; the lifespan asks at start, so no request waits
    for it). Imported in a child, as the conversions do: the server process stays small, and an install that is
    present but broken counts as absent."""
    if importlib.util.find_spec("SimpleITK") is None:
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", "import SimpleITK"], capture_output=True, timeout=IMPORT_PROBE)
    except subprocess.TimeoutExpired:
        logger.warning("SimpleITK did not import within %d s: conversion is off", IMPORT_PROBE)
        return False
    if probe.returncode != 0:
        logger.warning("SimpleITK is installed but does not import: conversion is off (%s)", probe.stderr[-300:])
    return probe.returncode == 0


def convertible(source: str | None, target: str) -> bool:
    """Whether a `source` file can be converted to `target` here (both extensions, e.g. ".nrrd")."""
    if source is None:
        return False
    source, target = source.lower(), target.lower()
    return source != target and source in FORMATS and target in FORMATS and available()


@dataclass(frozen=True)
class ConvertLimits:
    max_voxel_bytes: int  # MAX_CONVERT_BYTES
    timeout: int  # CONVERT_TIMEOUT: wall-clock seconds, and the child's CPU seconds
    parallel: int  # MAX_CONVERSIONS: at once, across the server's worker processes
    slots: Path  # directory of the lock files that count conversions at once

    @classmethod
    def from_settings(cls, settings: Settings) -> ConvertLimits:
        return cls(
            settings.MAX_CONVERT_BYTES,
            settings.CONVERT_TIMEOUT,
            settings.MAX_CONVERSIONS,
            settings.SESSION_PATH / ".convert-slots",
        )

    def child_limits(self, volume: Volume) -> tuple[int, int]:
        """Address space and file size the child may use for this volume."""
        # The voxels as stored, then twice as read (ITK reads a NIfTI with scl_slope as float, and a cast or the
        # writer may hold another copy). What is written: the voxels as read and a header, or the file itself.
        memory = CHILD_MEMORY_BASE + volume.voxel_bytes + 2 * volume.read_bytes
        written = max(volume.stream_bytes, volume.read_bytes + (64 << 10))
        return memory, written + written // 500 + TRAILING_SLACK  # gzip may grow incompressible data slightly


class Converter:
    """One per server process (on app.state through the session manager)."""

    command: tuple[str, ...] = (sys.executable, "-m", "inferserver.volumes.worker")  # + the job as JSON

    def __init__(self, limits: ConvertLimits, check_disk: Callable[[str, int], None]) -> None:
        self.limits = limits
        self.check_disk = check_disk  # UploadLimits.check_disk: 507 naming DISK_RESERVE_BYTES

    async def convert_upload(self, received: Path, found: str, dest: Path, label: str) -> None:
        """Convert an upload `received` (of type `found`) into `dest`, replacing it atomically."""
        target = format_of(dest)
        assert target is not None, f"{dest} is not named as one of {FORMATS}"
        # Named after the received file, so a restarted server removes it with that file's other leftovers.
        partial = received.with_name(f"{received.name}.convert{target}")
        try:
            await self._convert(received, found, partial, target, label)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)

    async def converted_copy(self, path: Path, target: str, label: str) -> Path:
        """`path` in format `target`: from the cache beside it, else converted once (one conversion across
        concurrent requests and worker processes; the others wait for it) and cached atomically."""
        source = format_of(path)
        if source is None or target not in FORMATS:
            raise ConversionError(f"only {', '.join(FORMATS)} files convert to {', '.join(FORMATS)}")
        if source == target:
            return path
        cached = path.with_name(f".{path.name}.as{target}")
        if _is_regular(cached):
            return cached
        async with _flock(path.with_name(f".{path.name}.as{target}.lock")):
            if _is_regular(cached):  # converted while this request waited
                return cached
            partial = path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}{target}")
            try:
                await self._convert(path, source, partial, target, label)
                os.replace(partial, cached)
            finally:
                partial.unlink(missing_ok=True)
        return cached

    async def _convert(self, source: Path, source_format: str, dest: Path, target: str, label: str) -> None:
        if not available():
            raise ConversionError(f"conversion is not installed ({INSTALL_HINT})")
        volume = read_header(source, source_format, label, self.limits.max_voxel_bytes)  # a bounded read
        memory, file_size = self.limits.child_limits(volume)
        async with self._slot():
            self.check_disk(label, file_size)
            logger.info(
                "%s: converting %s to %s (%d bytes of voxels): %s",
                label,
                source_format,
                target,
                volume.voxel_bytes,
                source,
            )
            job = Job(
                str(source),
                source_format,
                str(dest),
                target,
                label,
                self.limits.max_voxel_bytes,
                memory,
                self.limits.timeout,
                file_size,
            )
            await self._run_child(job)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of MAX_CONVERSIONS slots, shared by every worker process through lock files."""
        self.limits.slots.mkdir(exist_ok=True)
        while True:
            for index in range(self.limits.parallel):
                fd = _try_lock(self.limits.slots / f"{index}.lock")
                if fd is not None:
                    try:
                        yield
                    finally:
                        os.close(fd)
                    return
            await asyncio.sleep(LOCK_POLL)

    async def _run_child(self, job: Job) -> None:
        env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}  # one core per conversion
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            job.to_json(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.limits.timeout)
        except TimeoutError:
            raise ConversionTooLarge(
                f"{job.label}: the conversion took longer than CONVERT_TIMEOUT ({self.limits.timeout} s)"
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: nothing may write into the session afterwards
                proc.kill()
                await asyncio.shield(proc.wait())
        _raise_for(job, proc.returncode, out, err)


def _raise_for(job: Job, returncode: int | None, out: bytes, err: bytes) -> None:
    """Nothing when the child reported success; else the error it reported, or one for how it died."""
    lines = out.decode(errors="replace").strip().splitlines()
    result = json.loads(lines[-1]) if returncode == 0 and lines else None
    if result is not None and result.get("ok"):
        return
    if result is not None and result.get("error") in KINDS:
        raise KINDS[result["error"]](result["detail"])
    if returncode == -signal.SIGXCPU:
        raise ConversionTooLarge(f"{job.label}: the conversion used more CPU time than CONVERT_TIMEOUT allows")
    logger.error(
        "%s: the conversion process failed (exit %s): %s", job.label, returncode, err[-2000:].decode(errors="replace")
    )
    if returncode == -signal.SIGKILL:
        raise ConversionTooLarge(f"{job.label}: the conversion process was killed (out of memory?)")
    raise ConversionError(f"{job.label}: the conversion process failed (exit {returncode})")


def _is_regular(path: Path) -> bool:
    """A regular file itself, not a symlink to one (a model could leave a link under the cache's name)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another process (or fd) holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.asynccontextmanager
async def _flock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on `path`, waited for without blocking the event loop."""
    # Polled: the holder may be another worker process, which no asyncio.Event can hear from.
    while (fd := _try_lock(path)) is None:  # noqa: ASYNC110
        await asyncio.sleep(LOCK_POLL)
    try:
        yield
    finally:
        os.close(fd)  # the lock file stays: removing it would let a waiter lock a file no one else sees
