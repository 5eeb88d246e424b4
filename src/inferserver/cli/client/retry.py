"""Retrying a transfer after a dropped connection: a few tries with growing pauses, counted anew after progress."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from .errors import ClientError, Exit


@dataclass
class Retries:
    """`attempts` failures in a row without progress end the transfer; pauses double from `pause` up to `cap`."""

    attempts: int = 8
    pause: float = 0.5
    cap: float = 10.0
    failures: int = field(default=0, init=False)

    def progressed(self) -> None:
        self.failures = 0

    def failed(self, what: str, exc: Exception) -> None:
        """Sleep before the next try, or raise when the tries are used up."""
        self.failures += 1
        if self.failures > self.attempts:
            status = Exit.UNREACHABLE if isinstance(exc, httpx.TransportError) else Exit.FAILED
            raise ClientError(f"{what}: gave up after {self.attempts} retries: {exc}", status) from exc
        time.sleep(min(self.cap, self.pause * 2 ** (self.failures - 1)))
