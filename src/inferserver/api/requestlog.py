"""One log line per request: method, path, status, duration, and the session id when the path names one.

A plain ASGI middleware, so streamed answers (logs, downloads) pass through untouched; the line is written
when the answer has been sent, and the duration covers the whole stream.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.logs import current_session, printable

logger = logging.getLogger("inferserver.access")

SESSION_PATH = re.compile(r"/sessions/([^/]+)")


class RequestLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        found = SESSION_PATH.search(path)
        session_id = found.group(1) if found else None
        token = current_session.set(session_id)
        status = 500  # what the client gets when the app fails before answering
        began = time.monotonic()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            duration = time.monotonic() - began
            fields = {
                "method": scope["method"],
                "path": path,
                "status": status,
                "duration_ms": round(duration * 1000, 1),
            }
            # The path is the client's, percent-decoded: escaped, a `%0a` in it cannot forge a line of the text log.
            # (The JSON format escapes by itself; its `path` field stays exactly what was asked for.)
            suffix = f" session {printable(session_id)}" if session_id else ""
            logger.info(
                "%s %s %d %.1f ms%s", scope["method"], printable(path), status, duration * 1000, suffix, extra=fields
            )
            current_session.reset(token)
