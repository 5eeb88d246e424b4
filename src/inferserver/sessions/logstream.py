"""The log a client follows: queue positions while queued, then the log file as it grows.

It works from any worker process: the status comes from the store and the bytes from the log file; the
in-process Signal only makes the common case (the run is in this process) wake at once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from .state import QueuePlace, Signal, Status

KEEPALIVE = b"\0\n"  # the ablinfer client skips this line
KEEPALIVE_SECONDS = 5.0
QUEUE_LINE_SECONDS = 1.0
POLL_SECONDS = 0.5  # how stale a change made by another process may be seen
TOUCH_SECONDS = 60.0  # an open stream keeps its session from being cleaned up
READ_BLOCK = 1 << 16


async def follow_log(
    log_path: Path,
    status: Callable[[], Awaitable[Status | None]],
    position: Callable[[], Awaitable[QueuePlace | None]],
    signal: Signal,
    touch: Callable[[], Awaitable[None]],
    *,
    keepalive: float = KEEPALIVE_SECONDS,
    poll: float = POLL_SECONDS,
) -> AsyncIterator[bytes]:
    """Yield whole lines until the session is final (or gone) and every byte of its log has been sent."""
    last_touch = time.monotonic()
    while (await status()) is Status.READY:
        place = await position()
        if place is not None:
            # The client prints this line as it is; "Waiting, position in queue is N" must lead it.
            yield f"{place.line(time.time())}\n".encode()
        deadline = time.monotonic() + QUEUE_LINE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            token = signal.token()
            if (await status()) is not Status.READY:
                break
            await signal.wait(token, min(left, poll))

    pending = b""
    last_sent = time.monotonic()
    # A local file read in blocks between waits: each read returns at once, so it need not leave the loop.
    with open(log_path, "rb") as log:  # noqa: ASYNC230
        while True:
            token = signal.token()
            data = log.read(READ_BLOCK)
            if data:
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut == 0 and len(pending) >= READ_BLOCK:
                    cut = len(pending)  # a very long line goes out in pieces rather than piling up here
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
                    last_sent = time.monotonic()
                continue
            current = await status()
            if current is None or current.final:
                # Final was read after the last write; what is left in the file now is all there is.
                while data := log.read(READ_BLOCK):
                    pending += data
                if pending:
                    yield pending if pending.endswith(b"\n") else pending + b"\n"
                return
            now = time.monotonic()
            if now - last_touch >= TOUCH_SECONDS:
                await touch()
                last_touch = now
            silent = now - last_sent
            if silent >= keepalive:
                yield KEEPALIVE
                last_sent = time.monotonic()
                continue
            await signal.wait(token, min(poll, keepalive - silent))
