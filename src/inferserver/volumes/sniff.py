"""Header sniffing for uploaded volumes (NIfTI, NRRD, MetaImage, gzip), and whether one can be converted.

Everything here works on the first SNIFF_BYTES bytes of a file, so the upload path can sniff
while it streams the body to disk and never needs the whole file in memory.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .convert import convertible

# How much of a file's head callers collect and pass to sniff(). A NIfTI-2 header is 540 bytes,
# so 1024 leaves room for the gzip framing of a compressed one.
SNIFF_BYTES = 1024

# Extensions whose uploads are checked against their content; anything else is taken on trust.
SNIFFABLE = frozenset({".nii", ".nii.gz", ".nrrd"})

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")  # bytes, not str: the old server compared "ni1\0" to bytes
_NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")


def _sizeof_hdr_is(header: bytes, size: int) -> bool:
    """Whether the int32 at offset 0 is `size` in either byte order (NIfTI has no fixed endianness)."""
    if len(header) < 4:
        return False
    return size in (struct.unpack("<i", header[:4])[0], struct.unpack(">i", header[:4])[0])


def _sniff_plain(header: bytes) -> str | None:
    """The type of uncompressed header bytes, or None."""
    if _sizeof_hdr_is(header, 348) and header[344:348] in _NIFTI1_MAGICS:
        return ".nii"
    if _sizeof_hdr_is(header, 540) and header[4:8] in _NIFTI2_MAGICS:
        return ".nii"
    if header.startswith(b"NRRD000"):
        return ".nrrd"
    if header.startswith(b"ObjectType"):
        return ".mha"
    return None


def _gunzip_head(header: bytes) -> bytes:
    """As much of the decompressed stream as `header` allows; truncation is expected, not an error."""
    inflater = zlib.decompressobj(wbits=31)  # 31: expect a gzip wrapper
    try:
        # max_length bounds the output, so a tiny head of a decompression bomb stays tiny.
        return inflater.decompress(header, SNIFF_BYTES)
    except zlib.error:
        return b""


def sniff(header: bytes) -> str | None:
    """The file type (an extension such as ".nii.gz") from a file's first bytes, or None."""
    if header.startswith(_GZIP_MAGIC):
        inner = _sniff_plain(_gunzip_head(header))
        return f"{inner}.gz" if inner else ".gz"
    return _sniff_plain(header)


@dataclass(frozen=True)
class CheckResult:
    filetype: str | None  # what sniff() found
    acceptable: bool  # the upload may be kept as it is
    can_convert: bool  # the upload could be converted to the expected type


def check_filetype(header: bytes, expected_ext: str, *, check: bool, convert: bool) -> CheckResult:
    """Whether a file whose head is `header` may stand in for a `expected_ext` input.

    `check` is CHECK_INPUT_FILETYPES, `convert` is CONVERT_INPUTS: a file the server will convert is acceptable.
    """
    filetype = sniff(header)
    expected = expected_ext.lower()
    can_convert = _can_convert(filetype, expected, enabled=convert)
    acceptable = (
        not check or expected not in SNIFFABLE or (filetype is not None and filetype.lower() == expected) or can_convert
    )
    return CheckResult(filetype, acceptable, can_convert)


def _can_convert(filetype: str | None, expected_ext: str, *, enabled: bool) -> bool:
    """The one place that decides conversion: CONVERT_INPUTS on, SimpleITK importable, both types convertible."""
    return enabled and convertible(filetype, expected_ext)


class HeadCollector:
    """Keeps the first SNIFF_BYTES of a stream fed to it chunk by chunk, and nothing more."""

    def __init__(self) -> None:
        self._head = bytearray()

    def feed(self, chunk: bytes) -> bool:
        """Keep what is still missing of the head from `chunk`; whether the head is now complete."""
        missing = SNIFF_BYTES - len(self._head)
        if missing > 0:
            self._head += chunk[:missing]
        return self.complete

    @property
    def head(self) -> bytes:
        return bytes(self._head)

    @property
    def complete(self) -> bool:
        return len(self._head) >= SNIFF_BYTES
