"""A FIFO queue of runs with a fixed number of slots; it knows each waiting run's position."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

Work = Callable[[], Awaitable[None]]


class Scheduler:
    """Runs submitted work, at most `slots` at once, in submission order.

    Work is a coroutine factory so that nothing starts before a slot is free. The scheduler only
    orders and starts; each piece of work reports its own result.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self._pending: dict[str, Work] = {}  # insertion order is queue order
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.on_change: Callable[[], None] = lambda: None

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._dispatch(), name="inferserver-scheduler")

    async def stop(self) -> None:
        """Stop dispatching and cancel running work (which cleans up after itself)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def submit(self, job_id: str, work: Work) -> None:
        if job_id in self._pending or job_id in self._running:
            raise ValueError(f"job {job_id} is already queued")
        self._pending[job_id] = work
        self._wakeup.set()

    def position(self, job_id: str) -> int | None:
        """1 for the next run to start; None when not waiting."""
        for index, pending in enumerate(self._pending, start=1):
            if pending == job_id:
                return index
        return None

    def is_running(self, job_id: str) -> bool:
        return job_id in self._running

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending and len(self._running) < self.slots:
                job_id = next(iter(self._pending))
                work = self._pending.pop(job_id)
                task = asyncio.create_task(self._run(job_id, work), name=f"inferserver-run-{job_id}")
                self._running[job_id] = task
            self.on_change()  # positions moved

    async def _run(self, job_id: str, work: Work) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # the work reports its own failures; this is a bug guard
            logger.exception("run %s raised", job_id)
        finally:
            del self._running[job_id]
            self._wakeup.set()
