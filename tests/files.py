"""Big test files made cheaply, and their hashes: shared by the tests and the benchmarks (no heavy imports)."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path


def random_file(path: Path, size_mib: int, head: bytes = b"") -> str:
    """`head`, then one random MiB repeated size_mib times (cheap to make, not compressible); returns its sha256."""
    block = os.urandom(1 << 20)
    digest = hashlib.sha256(head)
    with path.open("wb") as f:
        f.write(head)
        for _ in range(size_mib):
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def nifti_gz_like(path: Path, size_mib: int) -> str:
    """A gzip member holding a NIfTI-1 header, then random bytes: sniffs as .nii.gz, costs no CPU to make."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    header[344:348] = b"n+1\0"
    return random_file(path, size_mib, head=gzip.compress(bytes(header)))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
