"""Conversion between the volume formats .nrrd, .nii and .nii.gz with SimpleITK (the `convert` extra).

SimpleITK keeps voxel type, spacing, origin and direction. It picks its reader and writer by file name, so
every file handed to it ends in its format's extension. ITK's NIfTI reader pads a short file with whatever it
finds instead of failing, so NIfTI files are verified first (complete gzip stream, enough data bytes for
the header's dimensions): a file that claims a type it is not must be refused, never converted to garbage.

Calls that read or write whole volumes run in a worker thread and, if the request is cancelled, are still
waited for, so nothing writes into a session after its request has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import math
import os
import secrets
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

# The formats converted in both directions; ".nii.gz" before ".nii" so suffix matching finds the longer one.
FORMATS = (".nii.gz", ".nii", ".nrrd")
INSTALL_HINT = "pip install 'inferserver[convert]'"

_READ_BLOCK = 1 << 20
T = TypeVar("T")


class ConversionError(Exception):
    """The file cannot be converted; the message says why and is meant for the client."""


@functools.cache
def available() -> bool:
    """Whether SimpleITK can be imported (asked once: the answer cannot change while the server runs)."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return False
    return True


def convertible(source: str | None, target: str) -> bool:
    """Whether a `source` file can be converted to `target` here (both extensions, e.g. ".nrrd")."""
    if source is None:
        return False
    source, target = source.lower(), target.lower()
    return source != target and source in FORMATS and target in FORMATS and available()


def format_of(path: Path) -> str | None:
    """The format a file name declares, or None."""
    name = path.name.lower()
    return next((fmt for fmt in FORMATS if name.endswith(fmt)), None)


def convert_file(source: Path, source_format: str, dest: Path) -> None:
    """Convert `source` (holding `source_format`) to the format `dest`'s name ends in. Blocking."""
    if not available():
        raise ConversionError(f"conversion is not installed ({INSTALL_HINT})")
    import SimpleITK as sitk

    if source_format in (".nii", ".nii.gz"):
        _verify_nifti(source, gzipped=source_format == ".nii.gz")
    # SimpleITK chooses its reader by the name: give it one that ends in the format the bytes hold.
    named = source.with_name(f".{source.name}.{secrets.token_hex(4)}{source_format}")
    os.symlink(source.name, named)
    try:
        image = sitk.ReadImage(str(named))
        # .nii.gz is compressed by its name; .nrrd is written raw, fastest to write and to read back.
        sitk.WriteImage(image, str(dest), useCompression=False)
    except RuntimeError as exc:  # SimpleITK raises RuntimeError with ITK's message
        raise ConversionError(_itk_reason(str(exc))) from exc
    finally:
        named.unlink()


async def convert_upload(received: Path, found: str, dest: Path) -> None:
    """Convert an upload `received` (of type `found`) into `dest`, replacing it atomically."""
    target = format_of(dest)
    assert target is not None, f"{dest} is not named as one of {FORMATS}"
    # Named after the received file, so a restarted server removes it with that file's other leftovers.
    partial = received.with_name(f"{received.name}.converted{target}")
    try:
        await _in_thread(convert_file, received, found, partial)
        os.replace(partial, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


async def converted_copy(path: Path, target: str) -> Path:
    """`path` in format `target`: from the cache beside it, else converted once and cached atomically."""
    source = format_of(path)
    if source is None or target not in FORMATS:
        raise ConversionError(f"only {', '.join(FORMATS)} files convert to {', '.join(FORMATS)}")
    if source == target:
        return path
    cached = path.with_name(f".{path.name}.as{target}")
    if cached.exists():
        return cached
    partial = path.with_name(f".{path.name}.as-{secrets.token_hex(4)}{target}")
    try:
        await _in_thread(convert_file, path, source, partial)
        os.replace(partial, cached)  # two requests at once may both convert; either result is the same
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return cached


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run `func` in a worker thread; when cancelled, wait for it to finish before passing the cancel on."""
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


def _verify_nifti(path: Path, *, gzipped: bool) -> None:
    """Raise ConversionError unless `path` is a whole NIfTI file: a complete stream with all its voxels."""
    opener = gzip.open if gzipped else open
    size = 0
    head = b""
    try:
        with opener(path, "rb") as stream:
            while block := stream.read(_READ_BLOCK):
                if len(head) < 540:
                    head += block[: 540 - len(head)]
                size += len(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ConversionError(f"the gzip stream is broken: {exc}") from exc
    needed = _nifti_size(head)
    if size < needed:
        raise ConversionError(f"the NIfTI header describes {needed} bytes of header and voxels, but the file holds {size}")


def _nifti_size(head: bytes) -> int:
    """Bytes a NIfTI-1 or -2 file needs by its header: the voxels' offset plus their count times their size."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            dims = struct.unpack(order + "8q", head[16:80])
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            offset = struct.unpack(order + "q", head[168:176])[0]
            break
    else:
        raise ConversionError("the file has no NIfTI header")
    rank = dims[0]
    if not 1 <= rank <= 7 or any(d < 1 for d in dims[1 : rank + 1]) or bitpix <= 0:
        raise ConversionError(f"the NIfTI header is invalid (dim {list(dims)}, bitpix {bitpix})")
    return offset + math.prod(dims[1 : rank + 1]) * bitpix // 8


def _itk_reason(message: str) -> str:
    """ITK's last meaningful line, without the source-file locations it prefixes."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if "itk::ERROR" in line or line.startswith("[nrrd]")]
    return ("SimpleITK could not read it: " + " ".join(useful or lines[-1:]))[:500]
