"""A session's status, its files on disk, and the in-process wake-up signal for its readers."""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ..specs.model import ModelSpec
from ..specs.runconfig import RunConfig


class Status(StrEnum):
    WAITING = "waiting"  # inputs still missing
    READY = "ready"  # queued
    WORKING = "working"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (Status.COMPLETE, Status.FAILED)


LIVE = {Status.WAITING, Status.READY, Status.WORKING}


class Signal:
    """Wakes every waiter at once. Take a token before looking at state, then wait on it: no lost wake-ups."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def token(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    @staticmethod
    async def wait(token: asyncio.Event, seconds: float) -> None:
        """Until the token is notified, or `seconds` have passed (a wake-up for polling, not an error)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), seconds)


class Signals:
    """One Signal per session id, for this process's readers; other processes are caught by polling."""

    def __init__(self) -> None:
        self._signals: dict[str, Signal] = {}

    def of(self, session_id: str) -> Signal:
        return self._signals.setdefault(session_id, Signal())

    def notify(self, session_id: str) -> None:
        signal = self._signals.get(session_id)
        if signal is not None:
            signal.notify()

    def notify_all(self) -> None:
        for signal in self._signals.values():
            signal.notify()

    def forget(self, session_id: str) -> None:
        self._signals.pop(session_id, None)


@dataclass(frozen=True)
class SessionFiles:
    """The session's directory: inputs/, outputs/, log."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def create(self) -> None:
        self.inputs.mkdir(parents=True)
        self.outputs.mkdir()
        self.log.touch()


@dataclass(frozen=True)
class SessionPlan:
    """What a session runs: its spec as it was at creation, its configuration, its files."""

    id: str
    spec: ModelSpec
    config: RunConfig
    files: SessionFiles

    def input_path(self, name: str) -> Path:
        return self.files.inputs / f"{name}{self.spec.inputs[name].extension}"

    def output_path(self, name: str) -> Path:
        return self.files.outputs / f"{name}{self.spec.outputs[name].extension}"


@dataclass(frozen=True)
class QueuePlace:
    """A queued session's place: 1 starts next; `starts_at` is a wall-clock estimate, None when unknown."""

    position: int
    starts_at: float | None = None

    def line(self, now: float) -> str:
        text = f"Waiting, position in queue is {self.position}"
        if self.starts_at is None:
            return text
        return f"{text} (about {about(self.starts_at - now)})"


def about(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} min" if minutes < 120 else f"{round(minutes / 60)} h"
