"""Which process dispatches: one interface, two ways of choosing.

With SQLite (one host) an flock on SESSION_PATH/.dispatch.lock decides, as before. With PostgreSQL (any number
of hosts sharing the database) a session-level advisory lock held on a connection of its own decides: an flock
over NFS is not coherent, and the database is the one thing every host already shares. Whoever holds the lock
dispatches; when its connection goes (process killed, host gone, backend terminated) PostgreSQL drops the lock
and a standby takes it.

A leader cannot know it still leads once its connection is in doubt, so it gives up at once: it checks the
connection every CHECK_SECONDS with a `SELECT 1` that must answer within CHECK_TIMEOUT, and a closed connection
is seen as soon as the socket says so. The server side learns of a vanished host from TCP keepalives set for
the session (a silent peer is dropped after about KEEPALIVE_IDLE + KEEPALIVE_COUNT * KEEPALIVE_INTERVAL s). A
new leader waits TAKEOVER_GRACE before it acts: longer than an old leader that lost its network needs to
notice and stop (fencing by time; the server releases such a lock only after the keepalives fail, later still).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from ..pgconn import CHECK_TIMEOUT, Connect, asyncpg_dsn, healthy, is_postgres, open_connection
from .instance import DispatchLock

logger = logging.getLogger(__name__)

LOCK_RETRY = 1.0  # how often a standby asks for the lock
CHECK_SECONDS = 1.0
TAKEOVER_GRACE = CHECK_SECONDS + CHECK_TIMEOUT + 0.5
# One lock per database: every server on it competes for the same key.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"inferserver dispatcher").digest()[:8], "big", signed=True)
LOCK_APPLICATION = "inferserver-dispatch-lock"


class Leadership(Protocol):
    """Being the one dispatcher: acquire, learn of its loss, give it back."""

    async def acquire(self) -> None:
        """Return once this process leads (waits as long as another does)."""

    async def lost(self) -> str:
        """Return, with the reason, once this process no longer surely leads."""

    async def release(self) -> None:
        """Stop leading (or waiting); safe to call in any state."""

    @property
    def leading(self) -> bool: ...

    def sure(self) -> bool:
        """Whether this process may start a run now (asked before each dispatch step, costs nothing)."""


class FileLeadership:
    """The flock in SESSION_PATH: the worker processes of one host, one session directory."""

    def __init__(self, path: Path) -> None:
        self._lock = DispatchLock(path)
        self._held = False

    async def acquire(self) -> None:
        while not self._lock.try_acquire():  # noqa: ASYNC110  # another process's file lock: no Event tells us
            await asyncio.sleep(LOCK_RETRY)
        self._held = True

    async def lost(self) -> str:
        await asyncio.Future()  # an flock lasts as long as the process
        raise AssertionError("unreachable")

    async def release(self) -> None:
        self._lock.release()
        self._held = False

    @property
    def leading(self) -> bool:
        return self._held

    def sure(self) -> bool:
        return self._held


class PostgresLeadership:
    """`pg_try_advisory_lock(LOCK_KEY)` on a dedicated asyncpg connection: one dispatcher among all hosts."""

    def __init__(self, url: str, connect: Connect = asyncpg.connect, grace: float = TAKEOVER_GRACE) -> None:
        self._dsn = asyncpg_dsn(url)
        self._connect = connect
        self._grace = grace
        self._conn: Any = None
        self._lost: asyncio.Future[str] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self._confirmed_at = 0.0  # monotonic time of the last check the connection answered

    async def acquire(self) -> None:
        while True:
            await self._take()
            # An old leader cut off from the database stops within CHECK_SECONDS + CHECK_TIMEOUT: let it.
            await asyncio.sleep(self._grace)
            if self.leading:
                return
            await self.release()

    async def _take(self) -> None:
        """Hold the lock, watched."""
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await open_connection(self._dsn, LOCK_APPLICATION, self._connect)
                async with asyncio.timeout(CHECK_TIMEOUT):
                    got = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._complain(f"cannot ask PostgreSQL for the dispatch lock: {exc!r}")
                await self._drop()
                await asyncio.sleep(LOCK_RETRY)
                continue
            if got:
                break
            self._complain(None)
            await asyncio.sleep(LOCK_RETRY)
        self._problem = None
        self._confirmed_at = time.monotonic()
        self._lost = asyncio.get_running_loop().create_future()
        self._conn.add_termination_listener(lambda _conn: self._lose("its connection to PostgreSQL was closed"))
        self._watch = asyncio.create_task(self._check(), name="inferserver-leadership-check")

    async def lost(self) -> str:
        if self._lost is None:
            raise RuntimeError("lost() before acquire()")
        return await asyncio.shield(self._lost)

    async def release(self) -> None:
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self._watch = None
        await self._drop()  # the session ends: PostgreSQL drops its advisory lock

    @property
    def leading(self) -> bool:
        return self._lost is not None and not self._lost.done() and self._conn is not None

    def sure(self) -> bool:
        """Leading, and the lock's connection answered less than CHECK_SECONDS + CHECK_TIMEOUT ago: shorter than
        TAKEOVER_GRACE, so a process stopped for a while (SIGSTOP, a paused VM) starts nothing when it wakes
        before its check has failed."""
        return self.leading and time.monotonic() - self._confirmed_at < CHECK_SECONDS + CHECK_TIMEOUT

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            if (problem := await healthy(self._conn)) is not None:
                self._lose(problem)
                return
            self._confirmed_at = time.monotonic()

    def _lose(self, reason: str) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await conn.close()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()

    def _complain(self, problem: str | None) -> None:
        if problem is not None and problem != self._problem:
            logger.warning("%s (pid %d); trying again every %g s", problem, os.getpid(), LOCK_RETRY)
        self._problem = problem


def leadership_for(database_url: str | None, session_path: Path) -> Leadership:
    """PostgreSQL's advisory lock with a PostgreSQL database; else the flock in SESSION_PATH."""
    if is_postgres(database_url):
        assert database_url is not None  # is_postgres said so; for the type checker
        return PostgresLeadership(database_url)
    return FileLeadership(session_path / ".dispatch.lock")
