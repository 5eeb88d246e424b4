"""At most MAX_CONCURRENT_REQUESTS short requests in flight per worker process; beyond that 503 at once.

An overloaded event loop serves everyone late: past the limit a client is told at once (503, `Retry-After`)
instead of waiting seconds behind requests it cannot see. Long transfers do not count — uploads, log
streams and downloads last minutes and have limits of their own (MAX_UPLOAD_BYTES, file descriptors,
disk); counted, a few big uploads would lock out the status polls that tell their clients how the run goes.
Runs inside AuthMiddleware: a refused credential never takes a slot, and guessers have their own limit; and
inside StatusAnswerCache: a status poll answered from kept bytes, or waiting for another poll's read, takes none.
"""

from __future__ import annotations

import logging
import re
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from .envelope import error_response

logger = logging.getLogger(__name__)

RETRY_AFTER = 1  # seconds: a status poll (the usual request) comes every second anyway
WARN_EVERY = 10.0  # seconds between log warnings while the limit is being hit
# Uploads, log streams and downloads: PUT/POST .../inputs/{name}, GET .../logs, GET .../outputs/{name}.
LONG = re.compile(r"/sessions/[^/]+/(inputs|outputs)/[^/]+|/sessions/[^/]+/logs")


def counted(scope: Scope) -> bool:
    """Whether the request takes a slot: every HTTP request but the long transfers."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):  # Starlette includes root_path in path when one is set
        path = path[len(root) :]
    return LONG.fullmatch(path) is None


class ConcurrencyLimit:
    """Counts the short requests in flight; over the limit (app.state.settings) answers 503 without waiting."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self._warned = -WARN_EVERY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(scope["app"].state, "settings", None)  # None: an app whose lifespan has not run
        if scope["type"] != "http" or settings is None or not counted(scope):
            await self.app(scope, receive, send)
            return
        limit: int = settings.MAX_CONCURRENT_REQUESTS
        if self.in_flight >= limit:
            await self._refuse(scope, receive, send, limit)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:  # once per WARN_EVERY: an overload must not flood the log too
            self._warned = now
            logger.warning("%d requests in flight in this worker: answering 503 (MAX_CONCURRENT_REQUESTS)", limit)
        response = error_response(
            503,
            f"the server is busy: {limit} requests are in flight in this worker, the limit "
            f"(MAX_CONCURRENT_REQUESTS); retry after {RETRY_AFTER} s",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER)
        await response(scope, receive, send)
