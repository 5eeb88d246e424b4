"""What an output taken out of a container may be: no bigger than MAX_OUTPUT_BYTES, never eating into the
disk's reserve; and the reason a user reads when writing it to our disk fails.

The member's size in its tar header is known before the first byte is written, so an output that is too
big, or that does not fit above the reserve, fails the run before its first byte is written. Other writers
share the disk, so the reserve is looked at again as the bytes arrive.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..sizes import human_size, rough_size
from .jobs import FileTransfer, RunFailed, RunLimits
from .tarstream import WriteFailed

# The free space is looked at again after each this many bytes (a statvfs call; cheap, but not per piece).
DISK_CHECK_BYTES = 8 << 20
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def disk_name(output: FileTransfer, disk_note: str) -> str:
    return disk_note or str(output.host.parent)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class OutputGuard:
    """A tarstream SizeGuard for one output: raises RunFailed naming the output and the setting it breaks."""

    def __init__(self, output: FileTransfer, limits: RunLimits, disk_note: str = "") -> None:
        self.output = output
        self.limits = limits
        self.disk = disk_name(output, disk_note)
        self._next_check = 0

    def __call__(self, size: int, written: int) -> None:
        if max(size, written) > self.limits.output_bytes:
            raise RunFailed(
                f"output {self.output.name} is {human_size(max(size, written))}, over the limit of "
                f"{human_size(self.limits.output_bytes)} (MAX_OUTPUT_BYTES)"
            )
        if written >= self._next_check:
            self._check_disk(size, written)
            self._next_check = written + DISK_CHECK_BYTES

    def _check_disk(self, size: int, written: int) -> None:
        # Before the first byte: room for the whole output above the reserve. Then the reserve itself, which
        # other uploads and runs may have eaten into meanwhile: stop before the disk fills.
        free = free_bytes(self.output.host.parent)
        if free - (size if written == 0 else 0) < self.limits.disk_reserve:
            raise RunFailed(
                f"not enough disk space for output {self.output.name} ({human_size(size)}): {self.disk} keeps "
                f"{human_size(self.limits.disk_reserve)} free (DISK_RESERVE_BYTES) and has {rough_size(free)} free"
            )


def write_failure(output: FileTransfer, exc: WriteFailed, disk_note: str = "") -> RunFailed:
    """The reason for a local write error: our disk, never the engine."""
    if exc.error.errno in NO_SPACE:
        return RunFailed(f"no space left on {disk_name(output, disk_note)} while writing output {output.name}")
    return RunFailed(f"could not write output {output.name} to {exc.path}: {exc.error.strerror or exc.error}")
