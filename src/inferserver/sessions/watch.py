"""Statuses of the sessions this process's log streams follow, fetched for all of them in one query.

A thousand open log streams would otherwise each ask the database twice a second; here one task asks once
per tick for every followed session, and only when the store's change token says something changed, and
wakes the streams whose session changed (a change made in another worker process shows up within a tick).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator

from .state import Signals, Status
from .store import Store

TICK = 0.5


class StatusWatch:
    def __init__(self, store: Store, signals: Signals, tick: float = TICK) -> None:
        self.store = store
        self.signals = signals
        self.tick = tick
        self._followers: Counter[str] = Counter()
        self._status: dict[str, Status | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._seen = b""  # the store's change token at the last query

    @contextlib.contextmanager
    def following(self, session_id: str) -> Iterator[None]:
        self._followers[session_id] += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="inferserver-status-watch")
        try:
            yield
        finally:
            self._followers[session_id] -= 1
            if self._followers[session_id] <= 0:
                del self._followers[session_id]
                self._status.pop(session_id, None)

    async def status(self, session_id: str) -> Status | None:
        """The last status seen for a followed session (asked directly the first time)."""
        if session_id not in self._status:
            self._status[session_id] = await self.store.status_of(session_id)
        return self._status[session_id]

    def changed(self, session_id: str) -> None:
        """This process changed the session: forget the cached status so the next read asks again."""
        self._status.pop(session_id, None)

    async def _poll(self) -> None:
        while self._followers:
            await asyncio.sleep(self.tick)
            token = self.store.changes.current()  # before the query: a change during it is seen next tick
            if token == self._seen:
                continue  # no session changed anywhere since the last query
            self._seen = token
            current = await self.store.statuses(list(self._followers))
            for session_id in list(self._followers):
                status = current.get(session_id)
                if self._status.get(session_id, status) != status:
                    self.signals.notify(session_id)
                self._status[session_id] = status

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
