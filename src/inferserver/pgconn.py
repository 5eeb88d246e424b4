"""Dedicated asyncpg connections (never the SQLAlchemy pool's) whose life stands for something: the dispatch
lock (scheduling/leadership.py) and the change feed (sessions/changefeed.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

CHECK_TIMEOUT = 2.0
CONNECT_TIMEOUT = 5.0
KEEPALIVE_IDLE = 5
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3

Connect = Callable[..., Awaitable[Any]]


def asyncpg_dsn(url: str) -> str:
    """The plain libpq URL asyncpg takes, from SQLAlchemy's `postgresql+asyncpg://...`."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def keepalive_settings(application: str) -> dict[str, str]:
    """Session settings that make the SERVER drop a silent peer (asyncpg has no client-side keepalive knobs)."""
    return {
        "application_name": application,
        "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
        "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
        "tcp_keepalives_count": str(KEEPALIVE_COUNT),
    }


async def open_connection(dsn: str, application: str, connect: Connect = asyncpg.connect) -> Any:
    """A connection of its own, with keepalives on both sides."""
    conn = await connect(dsn, timeout=CONNECT_TIMEOUT, server_settings=keepalive_settings(application))
    _client_keepalive(conn)
    return conn


def _client_keepalive(conn: Any) -> None:
    # Our side of the same: a leader behind a dead network also notices by its checks, this only helps.
    with contextlib.suppress(Exception):
        sock = conn._transport.get_extra_info("socket")  # asyncpg exposes no keepalive option
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


async def healthy(conn: Any) -> str | None:
    """None while the connection answers a `SELECT 1` within CHECK_TIMEOUT; else why not."""
    if conn.is_closed():
        return "its connection to PostgreSQL was closed"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await conn.fetchval("SELECT 1")
    except TimeoutError:
        return f"PostgreSQL did not answer a check within {CHECK_TIMEOUT:g} s"
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"its connection to PostgreSQL failed: {exc}"
    return None


def is_postgres(database_url: str | None) -> bool:
    return database_url is not None and make_url(database_url).get_backend_name() == "postgresql"
