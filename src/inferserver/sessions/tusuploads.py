"""Resumable (tus 1.0) uploads of an input: creation, PATCH at an offset, termination, expiry.

The bytes go to `SESSION_PATH/<session>/uploads/<id>` (not `inputs/`: they are not an input until complete). An
offset is acknowledged only once its bytes are fsynced and the offset is in the database, so a `kill -9` loses
nothing acknowledged; a PATCH that breaks keeps (and acknowledges) what arrived, unless it carried a checksum,
which cannot be verified on part of a chunk. One PATCH at a time per upload: a conditional UPDATE claims it, so a
second one (in any worker process) gets 409. When the last byte is in, the file becomes the input through the
same landing as a PUT (SessionManager.land_received): type check, conversion, queueing.

The sha256 answered at completion is of the whole file. hashlib state cannot be stored, so each process keeps the
running hash of the uploads it is receiving in memory and passes it from PATCH to PATCH (no extra read of the
file); an upload whose running hash this process lacks (the server restarted, or another worker took a PATCH) is
hashed once from disk at completion, in a thread, one file at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect

from ..config import Settings
from ..runner.filewriter import BlockWriter
from ..sizes import human_size
from ..volumes.sniff import SNIFF_BYTES
from .errors import (
    ChecksumMismatch,
    Conflict,
    Gone,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    SessionError,
    Stalled,
    TooLarge,
)
from .manager import UPLOAD_HEARTBEAT, UPLOAD_STALE, SessionManager
from .quotas import UploadLimits, limited_upload, out_of_space_is_507
from .state import Status
from .store import TusStore, TusUpload
from .uploads import check_head, dead_local_owner, read_head

logger = logging.getLogger(__name__)

CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
RUNNING_HASHES = 1024  # uploads whose running sha256 one process keeps; the least recent is rehashed if needed
HASH_READ = 1 << 20


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a key of CHECKSUMS
    digest: bytes


@dataclass(frozen=True)
class PatchResult:
    offset: int
    expires: float
    sha256: str | None = None  # set when this PATCH completed the upload and its file became the input


class TusUploads:
    """One per process (app.state.tus)."""

    def __init__(self, settings: Settings, manager: SessionManager, store: TusStore) -> None:
        self.settings = settings
        self.manager = manager
        self.store = store
        self.limits = UploadLimits.from_settings(settings)
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._running: OrderedDict[str, tuple[int, Any]] = OrderedDict()  # id -> (offset, hashlib sha256)
        self._rehash = asyncio.Semaphore(1)  # completion rehashes read whole files: one at a time

    def path(self, row: TusUpload) -> Path:
        return self.settings.SESSION_PATH / row.session_id / "uploads" / row.id

    # -- creation, lookup, termination ---------------------------------------------------------

    async def create(self, session_id: str, name: str, length: int, filename: str | None) -> TusUpload:
        label = f"input {name}"
        if length > self.limits.max_bytes:
            raise TooLarge(
                f"{label} is over the upload limit of {human_size(self.limits.max_bytes)} (MAX_UPLOAD_BYTES): "
                f"its Upload-Length is {length} bytes"
            )
        await self.manager.check_input(session_id, name)
        now = time.time()
        # Unfinished uploads have announced bytes still to come: they count against the reserve with this one.
        self.limits.check_disk(f"{label} (resumable upload)", length + await self.store.outstanding(now))
        row = TusUpload(
            id=secrets.token_hex(16),
            session_id=session_id,
            input_name=name,
            length=length,
            received=0,
            expires=now + self.settings.TUS_EXPIRY,
            filename=filename,
            finished=False,
        )
        path = self.path(row)
        with out_of_space_is_507(label):
            await self.store.add(row)  # the row first: the janitor removes files without one
            path.parent.mkdir(exist_ok=True)
            path.touch()
        logger.info("session %s: resumable upload %s of input %s (%d bytes) created", session_id, row.id, name, length)
        return row

    async def get(self, upload_id: str) -> TusUpload:
        """The upload; NotFound (404) for an unknown or terminated one, Gone (410) once it has expired."""
        row = await self.store.get(upload_id) if _valid_id(upload_id) else None
        if row is None:
            raise NotFound(f"unknown upload {upload_id!r}: it never existed, was terminated or was completed long ago")
        if not row.finished and row.expires < time.time():
            raise Gone(f"upload {upload_id} expired (TUS_EXPIRY is {self.settings.TUS_EXPIRY:g} s): create a new one")
        return row

    async def terminate(self, upload_id: str) -> None:
        row = await self.get(upload_id)
        await self.discard(row)

    async def discard(self, row: TusUpload) -> None:
        """Remove the upload and its bytes (termination, expiry, a refused file)."""
        await self.store.remove(row.id)
        self._running.pop(row.id, None)
        self.path(row).unlink(missing_ok=True)

    # -- PATCH ---------------------------------------------------------------------------------

    async def patch(
        self,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        declared: int | None,
        checksum: Checksum | None,
    ) -> PatchResult:
        row = await self.get(upload_id)
        label = f"input {row.input_name}"
        if row.finished:
            if offset == row.length and declared in (0, None):  # a client repeating its last PATCH's check
                return PatchResult(row.length, row.expires)
            raise Conflict(f"upload {upload_id} is complete: its {row.length} bytes are the session's {label}")
        if offset != row.received:
            raise _offset_conflict(upload_id, offset, row.received)
        if declared is not None and offset + declared > row.length:
            raise TooLarge(
                f"{label}: a chunk of {declared} bytes at offset {offset} passes the upload's Upload-Length of "
                f"{row.length} bytes"
            )
        await self.manager.check_input(row.session_id, row.input_name)
        owner = f"{self._owner_prefix}:{secrets.token_hex(4)}"
        if not await self.store.claim(
            upload_id, offset, owner, time.time() - UPLOAD_STALE, row.owner if dead_local_owner(row.owner) else None
        ):
            raise await self._not_claimed(upload_id, offset)
        beat = asyncio.create_task(self._heartbeat(upload_id, owner))
        try:
            received = await self._receive(row, offset, body, declared, checksum, owner)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            await asyncio.shield(self.store.release(upload_id, owner))
        await self.manager.store.touch(row.session_id)  # an upload in progress keeps its session from idle clean-up
        if received < row.length:
            return PatchResult(received, time.time() + self.settings.TUS_EXPIRY)
        return await self._complete(row)

    async def _receive(
        self,
        row: TusUpload,
        offset: int,
        body: AsyncIterator[bytes],
        declared: int | None,
        checksum: Checksum | None,
        owner: str,
    ) -> int:
        """Write the chunk after `offset`, fsync, acknowledge; the new offset. A broken body keeps what arrived
        (when no checksum was asked for) and then raises."""
        label = f"input {row.input_name}"
        path = self.path(row)
        chunk_hash = CHECKSUMS[checksum.algorithm]() if checksum is not None else None
        running = self._running_hash(row.id, offset)
        hashers = [h for h in (chunk_hash, running) if h is not None]
        broken: BaseException | None = None
        with out_of_space_is_507(label):
            async with BlockWriter(path, start=offset, hashers=hashers) as out:
                try:
                    async for piece in limited_upload(body, declared, self.limits, label):
                        if out.size + len(piece) > row.length - offset:
                            raise TooLarge(
                                f"{label}: the chunk at offset {offset} passes the upload's Upload-Length of "
                                f"{row.length} bytes"
                            )
                        await out.write(piece)
                except (ClientDisconnect, Stalled, InsufficientStorage) as exc:
                    broken = exc  # tus: keep as much as was received
                except BaseException:
                    os.truncate(path, offset)
                    raise
                await out.sync()
        if checksum is not None and chunk_hash is not None and (broken or chunk_hash.digest() != checksum.digest):
            os.truncate(path, offset)  # the chunk is discarded, as the checksum extension says
            if broken is not None:
                raise broken
            raise ChecksumMismatch(
                f"{label}: the chunk at offset {offset} does not match its Upload-Checksum ({checksum.algorithm});"
                f" it was discarded, send it again from offset {offset}"
            )
        received = offset + out.size
        if offset < SNIFF_BYTES <= received or received == row.length:
            await self._check_type(row, path)
        if received < row.length or broken is not None:
            # The last chunk is acknowledged by its landing (in the same transaction): never "complete" before it.
            expires = time.time() + self.settings.TUS_EXPIRY
            if not await self.store.advance(row.id, owner, received, expires):
                raise NotFound(f"upload {row.id} was terminated while this chunk was written")
        if running is not None:
            self._keep_running(row.id, received, running)
        if broken is not None:
            raise broken
        return received

    async def _check_type(self, row: TusUpload, path: Path) -> None:
        """Refuse a file of the wrong type as soon as its head is in (as PUT does), not after gigabytes more."""
        plan = await self.manager.check_input(row.session_id, row.input_name)
        extension = plan.spec.inputs[row.input_name].extension
        settings = self.settings
        head = await asyncio.to_thread(read_head, path)
        try:
            check_head(
                head, f"input {row.input_name}", extension, settings.CHECK_INPUT_FILETYPES, settings.CONVERT_INPUTS
            )
        except InvalidInput as exc:
            await self.discard(row)
            raise InvalidInput(f"{exc}; the upload was terminated") from exc

    async def _complete(self, row: TusUpload) -> PatchResult:
        path = self.path(row)
        sha256 = await self._sha256(row.id, row.length, path)
        try:
            result = await self.manager.land_received(row.session_id, row.input_name, path, sha256, row.id)
        except (InvalidInput, TooLarge):
            await self.discard(row)  # it can never become the input: a wrong file, or one too big to convert
            raise
        except Conflict:
            # The session moved on: the upload is of no use. Else a PUT of the same input holds it right now: the
            # bytes stay, and a retry of this last chunk lands them once the PUT is done.
            if await self.manager.store.status_of(row.session_id) is not Status.WAITING:
                await self.discard(row)
            raise
        self._running.pop(row.id, None)
        path.unlink(missing_ok=True)
        return PatchResult(row.length, row.expires, result.sha256)

    # -- the running sha256 --------------------------------------------------------------------

    def _running_hash(self, upload_id: str, offset: int) -> Any:
        """A copy of the running sha256 of the first `offset` bytes, if this process has it (a copy: a chunk that
        is discarded must not stay in it)."""
        if offset == 0:
            return hashlib.sha256()
        kept = self._running.get(upload_id)
        return kept[1].copy() if kept is not None and kept[0] == offset else None

    def _keep_running(self, upload_id: str, offset: int, running: Any) -> None:
        self._running[upload_id] = (offset, running)
        self._running.move_to_end(upload_id)
        if len(self._running) > RUNNING_HASHES:
            self._running.popitem(last=False)

    async def _sha256(self, upload_id: str, length: int, path: Path) -> str:
        kept = self._running.get(upload_id)
        if kept is not None and kept[0] == length:
            return str(kept[1].hexdigest())
        async with self._rehash:
            return await asyncio.to_thread(file_sha256, path)

    # -- claims --------------------------------------------------------------------------------

    async def _heartbeat(self, upload_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(UPLOAD_HEARTBEAT)
            await self.store.heartbeat(upload_id, owner)

    async def _not_claimed(self, upload_id: str, offset: int) -> SessionError:
        row = await self.get(upload_id)
        if row.received != offset:
            return _offset_conflict(upload_id, offset, row.received)
        if row.finished:
            return Conflict(f"upload {upload_id} is complete")
        return Conflict(f"upload {upload_id} is being written by another PATCH; ask HEAD for its offset and retry")


def _offset_conflict(upload_id: str, offset: int, received: int) -> Conflict:
    return Conflict(f"Upload-Offset {offset} does not match upload {upload_id}'s offset {received}")


def _valid_id(upload_id: str) -> bool:
    return len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(HASH_READ):
            digest.update(block)
    return digest.hexdigest()
