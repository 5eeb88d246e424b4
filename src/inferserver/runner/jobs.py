"""What the runner is asked to do and what it reports back: plain data, no FastAPI, no sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class FileTransfer:
    """One file crossing the container boundary: `host` on our disk, `container` inside the image."""

    name: str
    host: Path
    container: str
    # An input with this path is bind-mounted read-only from it (the path as the engine's host sees it,
    # maybe not ours) instead of being copied in from `host`.
    mount_source: str | None = None


@dataclass(frozen=True)
class RunLimits:
    """What one run may use: the server's settings, or less where the model's spec asks for less."""

    memory: int  # bytes; swap is not allowed beyond it
    cpus: float  # 0: no limit
    pids: int
    shm_size: int  # bytes of /dev/shm
    timeout: int  # seconds from the container's start to its exit
    log_bytes: int  # the session log stops growing past this
    output_bytes: int  # the largest output file taken out of the container
    disk_reserve: int  # free bytes the disk outputs are written to keeps; an output eating into it fails the run


@dataclass(frozen=True)
class RunJob:
    job_id: str
    image: str
    argv: list[str]
    inputs: list[FileTransfer]
    outputs: list[FileTransfer]
    limits: RunLimits
    labels: dict[str, str] = field(default_factory=dict)
    # GPUs of the pool for this run only, [] for none; None: no pool, the runner's GPUS mode decides.
    gpu_ids: list[str] | None = None
    # Added to the reason when the engine refuses an input's bind mount: which setting to look at.
    mount_note: str = ""
    # The session's attempt: a later attempt's container is named apart from a stale one of an earlier attempt
    # still on the same engine (its engine was lost and came back).
    attempt: int = 0
    # How reasons name the disk outputs are written to, e.g. "SESSION_PATH (/var/inferserver)";
    # empty: the output's own directory.
    disk_note: str = ""

    @property
    def container_name(self) -> str:
        return f"inferserver-{self.job_id}" + (f"-{self.attempt}" if self.attempt else "")

    @property
    def mounted_inputs(self) -> list[FileTransfer]:
        return [i for i in self.inputs if i.mount_source is not None]

    @property
    def copied_inputs(self) -> list[FileTransfer]:
        return [i for i in self.inputs if i.mount_source is None]


@dataclass(frozen=True)
class RunOutcome:
    ok: bool
    reason: str = ""
    exit_code: int | None = None


class LogSink(Protocol):
    """Where the container's output and the runner's own notes go, as they come."""

    async def write(self, data: bytes) -> None: ...


class RunFailed(Exception):
    """A run cannot go on; the message is what the user reads in the session's `info`."""


class EngineLost(Exception):
    """The engine stopped answering during the run. Not a failure yet: the container is left as it is, to be
    re-attached if the engine comes back in time (or removed as stale once it does, too late)."""

    def __init__(self, reason: str, container_id: str | None) -> None:
        super().__init__(reason)
        self.container_id = container_id


StartedCallback = Callable[[str], Awaitable[None]]
