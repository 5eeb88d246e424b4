"""Changes announced between hosts: with PostgreSQL every committed session change sends a NOTIFY, and every
process LISTENs on a connection of its own.

A notification bumps the process's change token (sessions/changes.py), so status answers cached under it are
read again, and wakes the dispatcher (a session queued through another host starts without waiting for a
tick). The mmapped token of one host cannot do this across hosts: an mmap over NFS is not coherent. While the
LISTEN connection is down, announcements may be missed: the token is distrusted (nothing cached is used) until
it is back.

Log appends are not announced: a reader follows the log file itself, reading it again every
logstream.POLL_SECONDS (0.5 s) while the run goes on; a NOTIFY per log write would put every line a model
prints through the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from typing import Any

import asyncpg

from ..pgconn import asyncpg_dsn, healthy, open_connection
from .changes import ChangeToken
from .state import Signal

logger = logging.getLogger(__name__)

CHANNEL = "inferserver_changes"
CHECK_SECONDS = 1.0
RETRY_SECONDS = 1.0
APPLICATION = "inferserver-changes"


def process_name() -> str:
    """The payload of this process's announcements: it ignores its own (its writes already bumped its token)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class ChangeFeed:
    """LISTENs on CHANNEL; each announcement from another process bumps `changes` and wakes `wakeup`."""

    def __init__(self, url: str, changes: ChangeToken, wakeup: Signal, me: str) -> None:
        self._dsn = asyncpg_dsn(url)
        self._changes = changes
        self._wakeup = wakeup
        self._me = me
        self.received = 0  # announcements from other processes (for tests and metrics)
        changes.distrust()  # until the first LISTEN is in place

    async def run_forever(self) -> None:
        problem: str | None = None
        while True:
            conn: Any = None
            try:
                conn = await open_connection(self._dsn, APPLICATION)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, self._heard)
                self._changes.trust()
                if problem is not None:
                    logger.info("change announcements arrive again")
                    problem = None
                while problem is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), CHECK_SECONDS)
                    problem = "its connection was closed" if closed.is_set() else await healthy(conn)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                problem = repr(exc)
            finally:
                self._changes.distrust()
                if conn is not None:
                    conn.terminate()
            logger.warning(
                "no change announcements from PostgreSQL (%s): status answers are read from the database until "
                "they are back; trying again in %g s",
                problem,
                RETRY_SECONDS,
            )
            await asyncio.sleep(RETRY_SECONDS)

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self._me:
            return
        self.received += 1
        self._changes.elsewhere()
        self._wakeup.notify()
