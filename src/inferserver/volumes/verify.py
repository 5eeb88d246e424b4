"""A volume file checked against its own header: header first (bounded reads), then the bytes counted as they
stream. Used by the server before it starts a conversion and by the conversion child before SimpleITK opens it.
"""

from __future__ import annotations

import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import nifti, nrrd
from .errors import ConversionError

BLOCK = 1 << 20  # read and decompress this much at a time, whatever the header claims
TRAILING_SLACK = 1 << 20  # bytes a (decompressed) stream may hold past what its header describes
FORMATS = (".nii.gz", ".nii", ".nrrd")  # ".nii.gz" before ".nii": suffix matching finds the longer one


@dataclass(frozen=True)
class Volume:
    format: str  # ".nii", ".nii.gz" or ".nrrd"
    voxel_bytes: int  # what the header says the voxels take, checked against MAX_CONVERT_BYTES
    stream_bytes: int  # what the reader consumes: NIfTI header + voxels (decompressed); NRRD header + voxels
    read_bytes: int  # the voxels in memory once read (a rescaled NIfTI is read as float)


def open_regular(path: Path, label: str) -> BinaryIO:
    """`path` opened for reading, refusing anything but a regular file reached without a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ConversionError(f"{label}: cannot open the file ({exc.strerror}); a symlink is never followed") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConversionError(f"{label}: not a regular file")
    return os.fdopen(fd, "rb")


def read_header(path: Path, fmt: str, label: str, max_voxel_bytes: int) -> Volume:
    """The header's claim, verified without reading the voxels (the server's side: bounded, cheap)."""
    with open_regular(path, label) as stream:
        if fmt == ".nrrd":
            header = nrrd.parse(stream.read(nrrd.MAX_HEADER_BYTES), label, max_voxel_bytes)
            return Volume(fmt, header.voxel_bytes, header.data_offset + header.voxel_bytes, header.read_bytes)
        head = _gunzip_head(stream, label) if fmt == ".nii.gz" else stream.read(nifti.HEAD_BYTES)
        parsed = nifti.parse(head, label, max_voxel_bytes)
        return Volume(fmt, parsed.voxel_bytes, parsed.total, parsed.read_bytes)


def verify(path: Path, fmt: str, label: str, max_voxel_bytes: int) -> Volume:
    """read_header, then every byte the header promises counted (the child's side: reads the whole file)."""
    with open_regular(path, label) as stream:
        size = os.fstat(stream.fileno()).st_size
        if fmt == ".nrrd":
            header = nrrd.parse(stream.read(nrrd.MAX_HEADER_BYTES), label, max_voxel_bytes)
            volume = Volume(fmt, header.voxel_bytes, header.data_offset + header.voxel_bytes, header.read_bytes)
            needed, what = header.voxel_bytes, "voxels after the header"
            stream.seek(header.data_offset)
            gzipped = header.encoding == "gzip"
        else:
            head = _gunzip_head(stream, label) if fmt == ".nii.gz" else stream.read(nifti.HEAD_BYTES)
            parsed = nifti.parse(head, label, max_voxel_bytes)
            volume = Volume(fmt, parsed.voxel_bytes, parsed.total, parsed.read_bytes)
            needed, what = parsed.total, "header and voxels"
            stream.seek(0)
            gzipped = fmt == ".nii.gz"
        limit = needed + TRAILING_SLACK
        present = count_gzip(stream, limit, label) if gzipped else size - stream.tell()
    if present < needed:
        raise ConversionError(f"{label}: its header describes {needed} bytes of {what}, but the file holds {present}")
    if present > limit:
        raise ConversionError(f"{label}: the file holds {present - needed} bytes more than its header describes")
    return volume


def count_gzip(stream: BinaryIO, limit: int, label: str) -> int:
    """Bytes the gzip stream (one or more members) from the current position decompresses to.

    Never holds more than BLOCK of output; ConversionError once it passes `limit`, or on a broken stream.
    """
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    started = False  # the current member has been fed bytes but has not ended
    pending = b""
    try:
        while True:
            if not pending:
                pending = stream.read(BLOCK // 16)
                if not pending:
                    break
            started = True
            total += len(inflater.decompress(pending, BLOCK))
            if total > limit:
                raise ConversionError(
                    f"{label}: the gzip stream decompresses to more than the {limit} bytes its header allows"
                )
            if inflater.eof:  # another member may follow
                pending, inflater, started = inflater.unused_data, zlib.decompressobj(wbits=31), False
            else:
                pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ConversionError(f"{label}: the gzip stream is broken: {exc}") from exc
    if started:
        raise ConversionError(f"{label}: the gzip stream is broken: it ends before its end marker")
    return total


def _gunzip_head(stream: BinaryIO, label: str) -> bytes:
    """The first HEAD_BYTES of a gzip stream, decompressing no more than that."""
    inflater = zlib.decompressobj(wbits=31)
    head = b""
    try:
        while len(head) < nifti.HEAD_BYTES and (data := inflater.unconsumed_tail or stream.read(4096)):
            head += inflater.decompress(data, nifti.HEAD_BYTES - len(head))
            if inflater.eof:
                break
    except zlib.error as exc:
        raise ConversionError(f"{label}: the gzip stream is broken: {exc}") from exc
    return head


def format_of(path: Path) -> str | None:
    """The format a file name declares, or None."""
    name = path.name.lower()
    return next((fmt for fmt in FORMATS if name.endswith(fmt)), None)
