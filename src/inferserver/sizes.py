"""Byte sizes as people write them ("8g", "512MiB", "2GB", "1048576") and as people read them ("8 GiB").

One parser for every size setting and every size in a model spec's `inferserver` section. Suffixes:
`KiB`/`MiB`/`GiB`/`TiB` are binary, `kB`/`MB`/`GB`/`TB` decimal, and Docker's bare `k`/`m`/`g`/`t`
(as in `docker run --memory 8g`) binary; case does not matter, a `B` alone means bytes.
"""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_BINARY = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))

DOCKER_MIN_MEMORY = 6 << 20  # dockerd refuses a container memory limit below this


def parse_size(value: object) -> int:
    """A whole number of bytes; ValueError saying what is accepted for anything else."""
    if isinstance(value, bool):  # bool is an int to Python, never a size to a person
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match and unit is not None:
            size = float(match.group(1)) * unit if "." in match.group(1) else int(match.group(1)) * unit
            if size == int(size):
                return int(size)
            raise ValueError(f"{value!r} is not a whole number of bytes")
    raise ValueError(f"{value!r} is not a size: give bytes or a number with a unit such as 512MiB, 8g or 2GB")


def parse_size_at_least(value: object, minimum: int) -> int:
    size = parse_size(value)
    if size < minimum:
        raise ValueError(f"must be at least {human_size(minimum)}")
    return size


def human_size(size: int) -> str:
    """Exact and short: 8589934592 → "8 GiB", 1536 MiB stays "1536 MiB", 1000 → "1000 bytes"."""
    for name, unit in _BINARY:
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes" if size != 1 else "1 byte"


def rough_size(size: int) -> str:
    """For amounts that are not limits (free space): one decimal in the largest fitting unit."""
    for name, unit in _BINARY:
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} bytes"
