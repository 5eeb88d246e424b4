"""A session: one model run's configuration, status and files."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
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
    async def wait(token: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(token.wait(), timeout)
        except asyncio.TimeoutError:
            pass


@dataclass
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


@dataclass
class Session:
    id: str
    spec: ModelSpec  # the spec as it was when the session was created
    config: RunConfig
    files: SessionFiles
    status: Status = Status.WAITING
    info: str = ""
    needed: list[str] = field(default_factory=list)
    uploading: set[str] = field(default_factory=set)
    readers: int = 0  # open log streams and downloads: never clean up under them
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    started: float | None = None
    container_id: str | None = None
    changed: Signal = field(default_factory=Signal)

    def touch(self) -> None:
        self.updated = time.time()

    def set_status(self, status: Status, info: str = "") -> None:
        self.status = status
        self.info = info
        self.touch()
        self.changed.notify()

    def input_path(self, name: str) -> Path:
        return self.files.inputs / f"{name}{self.spec.inputs[name].extension}"

    def output_path(self, name: str) -> Path:
        return self.files.outputs / f"{name}{self.spec.outputs[name].extension}"
