"""The log a client follows: queue positions while queued, then the log file as it grows."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from .state import Session, Status

KEEPALIVE = b"\0\n"  # the ablinfer client skips this line
KEEPALIVE_SECONDS = 5.0
QUEUE_LINE_SECONDS = 1.0
READ_BLOCK = 1 << 16


async def follow_log(
    session: Session,
    position: Callable[[], int | None],
    *,
    keepalive: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    """Yield whole lines until the session is final and every byte of its log has been sent."""
    while session.status is Status.READY:
        token = session.changed.token()
        queued_at = position()
        if queued_at is not None:
            yield f"Waiting, position in queue is {queued_at}\n".encode()
        deadline = time.monotonic() + QUEUE_LINE_SECONDS
        while session.status is Status.READY and (left := deadline - time.monotonic()) > 0:
            await session.changed.wait(token, left)
            token = session.changed.token()

    pending = b""
    last_sent = time.monotonic()
    with open(session.files.log, "rb") as log:
        while True:
            token = session.changed.token()
            final = session.status.final  # looked at before reading: what was written before is read now
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
            if final:
                if pending:
                    yield pending + b"\n"
                return
            silent = time.monotonic() - last_sent
            if silent >= keepalive:
                yield KEEPALIVE
                last_sent = time.monotonic()
                continue
            await session.changed.wait(token, keepalive - silent)
