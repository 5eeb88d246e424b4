"""Failed credentials counted per client address, so password guessing cannot keep the hashing thread busy.

After AUTH_MAX_FAILURES failures within AUTH_FAILURE_WINDOW seconds (a window opened by the first failure)
an address gets 429 without any hashing until the window ends. A password check in progress counts as a
failure until it succeeds: a burst of concurrent guesses cannot slip more checks past the limit.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_ADDRESSES = 10_000  # addresses tracked at once; the oldest windows are forgotten first


@dataclass
class _Window:
    began: float
    failures: int


class FailureLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None when it may try now."""
        current = self._current(address)
        if current is None or current.failures < self.limit:
            return None
        return max(1, math.ceil(current.began + self.window - self.clock()))

    def fail(self, address: str) -> bool:
        """Count one failure (or one check in progress) against `address`; True when this one reaches the limit."""
        current = self._current(address)
        if current is None:
            current = self._windows[address] = _Window(self.clock(), 0)
            if len(self._windows) > MAX_ADDRESSES:
                self._windows.popitem(last=False)
        current.failures += 1
        return current.failures == self.limit

    def succeeded(self, address: str) -> None:
        """A check counted by `fail` succeeded after all: take it back (earlier failures stay)."""
        current = self._current(address)
        if current is not None and current.failures > 0:
            current.failures -= 1

    def _current(self, address: str) -> _Window | None:
        found = self._windows.get(address)
        if found is not None and self.clock() - found.began >= self.window:
            del self._windows[address]
            return None
        return found
