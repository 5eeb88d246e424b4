"""Knowing, without asking the database, that no session changed: a token shared by the processes of one
SESSION_PATH, and a cache of status answers that is only trusted while the token stays the same.

Status polls are most of a server's requests, and reading a session through aiosqlite costs about 1 ms of
thread hops. Every committed change of session state (in any worker process) replaces an 8-byte random
token in a small file that every process maps; a poll whose token matches the one its cached answer was
read under answers from memory. Random, not a counter: two processes bumping a counter at the same
instant could both write the same value, and a change would go unseen.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Generic, TypeVar

TOKEN_BYTES = 8
T = TypeVar("T")


class ChangeToken:
    """The token in `path` (created when missing), mapped; or a private one with `path=None`.

    With PostgreSQL the token is private to the process and changes made elsewhere arrive as notifications
    (sessions/changefeed.py): `elsewhere()` bumps a second part of it, and while the feed is down the token is
    `distrust()`ed: every read is a new token, so no cached answer is used until `trust()` comes back.
    """

    def __init__(self, path: Path | None) -> None:
        self._elsewhere = 0
        self._trusted = True
        if path is None:
            self._map: mmap.mmap | bytearray = bytearray(TOKEN_BYTES)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < TOKEN_BYTES:
                os.ftruncate(fd, TOKEN_BYTES)
            self._map = mmap.mmap(fd, TOKEN_BYTES)
        finally:
            os.close(fd)  # the mapping keeps the file

    def current(self) -> bytes:
        if not self._trusted:
            return os.urandom(TOKEN_BYTES + 8)
        return bytes(self._map[:TOKEN_BYTES]) + self._elsewhere.to_bytes(8)

    def elsewhere(self) -> None:
        """Another process (perhaps on another host) committed a change."""
        self._elsewhere += 1

    def distrust(self) -> None:
        """Changes elsewhere may go unannounced: nothing cached under the token may be used."""
        self._trusted = False

    def trust(self) -> None:
        """Announcements arrive again; what happened while they did not counts as a change."""
        self._elsewhere += 1
        self._trusted = True

    def replace(self) -> None:
        """Call after a change is committed: a reader that sees the new token then reads the new state."""
        self._map[:TOKEN_BYTES] = os.urandom(TOKEN_BYTES)


class ChangeCache(Generic[T]):
    """Answers read under a token, dropped all at once when the token changes; at most `size` of them.

    Concurrent misses of one key share one read: fifty clients polling a session that just changed cost
    one database read, not fifty queued behind each other.
    """

    def __init__(self, changes: ChangeToken, size: int = 4096) -> None:
        self._changes = changes
        self._size = size
        self._token = b""
        self._entries: OrderedDict[str, asyncio.Future[T]] = OrderedDict()

    async def get(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """The answer for `key`: from memory while the token is unchanged, else `read()` once for all askers.

        The token is read before the state, so an answer is never kept under a token newer than what it saw.
        """
        self._refresh()
        entry = self._entries.get(key)
        if entry is None:
            entry = asyncio.ensure_future(read())
            self._store(key, entry)
            # A failed read (unknown session, database error) is not kept: the next ask tries again.
            entry.add_done_callback(lambda done: self._forget_failed(key, done))
        return await asyncio.shield(entry)

    def token(self) -> bytes:
        """The token now: read it before the state whose answer is then handed to `keep`."""
        return self._changes.current()

    def peek(self, key: str) -> T | None:
        """The answer kept for `key` if it is ready and the token unchanged; never reads, never waits."""
        self._refresh()
        entry = self._entries.get(key)
        if entry is None or not entry.done() or entry.cancelled() or entry.exception() is not None:
            return None
        return entry.result()

    def keep(self, key: str, value: T, token: bytes) -> None:
        """Remember `value`, read after `token` was current: dropped at once if the token has moved on since."""
        self._refresh()
        if token == self._token:
            entry: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            entry.set_result(value)
            self._store(key, entry)

    def _refresh(self) -> None:
        token = self._changes.current()
        if token != self._token:
            self._entries.clear()
            self._token = token

    def _store(self, key: str, entry: asyncio.Future[T]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def _forget_failed(self, key: str, done: asyncio.Future[T]) -> None:
        if (done.cancelled() or done.exception() is not None) and self._entries.get(key) is done:
            del self._entries[key]
