"""A size cap on a run's log: a chatty or runaway model must not fill the session disk."""

from __future__ import annotations

from ..sizes import human_size
from .jobs import LogSink


class CappedLog:
    """Passes writes on until `limit` bytes have gone through, then one note line, then nothing."""

    def __init__(self, inner: LogSink, limit: int, written: int = 0) -> None:
        self.inner = inner
        self.limit = limit
        self.written = written  # what the log already holds (a re-attached run's)
        self.truncated = False
        self._line_start = True  # whether what went through so far ends a line

    async def write(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.limit - self.written
        if len(data) <= room:
            await self._pass(data)
            return
        self.truncated = True
        head = data[:room]
        # The note starts on a line of its own even when the cut falls mid-line.
        at_line_start = head.endswith(b"\n") if head else self._line_start
        newline = b"" if at_line_start else b"\n"
        note = f"inferserver: log truncated at {human_size(self.limit)} (LOG_MAX_BYTES)\n".encode()
        await self._pass(head + newline + note)

    async def _pass(self, data: bytes) -> None:
        if data:
            self.written += len(data)
            self._line_start = data.endswith(b"\n")
            await self.inner.write(data)
