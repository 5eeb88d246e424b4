"""Clean-up: idle sessions per the CLEANUP_* settings, and what dead upload processes left behind."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from ..config import Settings
from ..sessions.manager import UPLOAD_STALE, SessionManager
from ..sessions.state import Status
from ..sessions.store import Store, TusStore
from ..sessions.tusuploads import TusUploads
from ..sessions.uploads import dead_local_owner, partial_owner_pid, process_alive
from ..volumes.convert import PARTIAL_MARK

logger = logging.getLogger(__name__)


class Janitor:
    def __init__(self, settings: Settings, store: Store, manager: SessionManager) -> None:
        self.settings = settings
        self.store = store
        self.manager = manager
        self.tus = TusUploads(settings, manager, TusStore(store))

    async def cleanup(self, now: float | None = None) -> list[str]:
        """Forget idle sessions the settings allow to go; never one a client is still using."""
        now = time.time() if now is None else now
        statuses = [Status.WAITING]
        if self.settings.CLEANUP_FINISHED:
            statuses += [Status.COMPLETE, Status.FAILED]
        gone = []
        for row in await self.store.with_status(*statuses):
            if now - row.updated < self.settings.CLEANUP_SECONDS:
                continue
            if await self.store.active_uploads(row.id, now - UPLOAD_STALE):
                continue
            await self.store.remove(row.id)
            self.manager.forget(row.id)
            if self.settings.CLEANUP_FILES:
                shutil.rmtree(self.settings.SESSION_PATH / row.id, ignore_errors=True)
            gone.append(row.id)
        self.remove_partial_uploads(now)
        await self.remove_tus_uploads(now)
        if gone:
            logger.info("cleaned up %d idle sessions", len(gone))
        return gone

    def remove_partial_uploads(self, now: float) -> None:
        """Partial files of uploads and conversions whose process died, or that stopped changing long ago."""
        root = self.settings.SESSION_PATH
        # A live process's file may sit unchanged while it is converted (up to CONVERT_TIMEOUT); a conversion's
        # hard link to its source keeps the source's old mtime, its ctime is when it was made.
        stale_before = now - UPLOAD_STALE - self.settings.CONVERT_TIMEOUT
        for pattern, mark in (("*/inputs/.*.upload-*", ".upload-"), (f"*/outputs/.*{PARTIAL_MARK}*", PARTIAL_MARK)):
            for partial in root.glob(pattern):
                self._remove_if_dead(partial, mark, stale_before)

    async def remove_tus_uploads(self, now: float) -> None:
        """Resumable uploads past TUS_EXPIRY (row and bytes), and the bytes of uploads whose row is gone (their
        session was cleaned up; removing a session removes its uploads' rows)."""
        for row in await self.tus.store.expired(now, now - UPLOAD_STALE):
            await self.tus.discard(row)
            logger.info("session %s: resumable upload %s of input %s expired", row.session_id, row.id, row.input_name)
        # Listed before the rows are read: an upload's row is inserted before its file is made, so a file listed
        # here without a row had its row removed.
        files = list(self.settings.SESSION_PATH.glob("*/uploads/*"))
        known = await self.tus.store.ids()
        for path in files:
            if path.name not in known:
                path.unlink(missing_ok=True)

    @staticmethod
    def _remove_if_dead(partial: Path, mark: str, stale_before: float) -> None:
        pid = partial_owner_pid(partial, mark)
        with contextlib.suppress(FileNotFoundError):
            st = partial.stat()
            if (pid is not None and not process_alive(pid)) or max(st.st_mtime, st.st_ctime) < stale_before:
                partial.unlink()

    async def release_dead_claims(self) -> None:
        """Upload claims of processes on this host that no longer exist: their inputs can be uploaded again."""
        for session_id, name, owner in await self.store.upload_claims():
            if dead_local_owner(owner):
                await self.store.release_upload(session_id, name, owner)
