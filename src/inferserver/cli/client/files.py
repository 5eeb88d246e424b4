"""Reading a file region in pieces (for request bodies) and writing a download under a temporary name."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

PIECE = 1 << 20  # bytes per read and per progress update


def pieces(path: Path, start: int, length: int, advance: Callable[[int], None]) -> Iterator[bytes]:
    """`length` bytes of `path` from `start`, a MiB at a time, reporting each piece to `advance`."""
    with path.open("rb") as stream:
        stream.seek(start)
        left = length
        while left > 0:
            data = stream.read(min(PIECE, left))
            if not data:
                raise OSError(f"{path} became shorter while it was read")
            left -= len(data)
            advance(len(data))
            yield data


def partial_name(target: Path) -> Path:
    """Where a download goes until it is complete: hidden, beside the target (same disk, so the rename is atomic)."""
    return target.with_name(f".{target.name}.part")


def finish(partial: Path, target: Path) -> None:
    with partial.open("rb+") as stream:
        os.fsync(stream.fileno())  # a complete-looking file must be complete, even after a crash
    partial.replace(target)
