"""NRRD header verification: attached data only, sizes x type counted, encodings we can count exactly.

A NRRD header may name a `data file` anywhere (a path, `LIST`, a `%d` pattern); the library that reads it
follows that name. So a header is parsed here first, bounded in size and lines, and anything but data attached
after the header's blank line is refused. Nothing is allocated by the header's claim.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ConversionError, ConversionTooLarge

MAX_HEADER_BYTES = 64 << 10
MAX_HEADER_LINES = 1024
ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}  # the ones whose bytes are counted exactly

_MAGIC = re.compile(rb"NRRD000[1-5]")
_TYPES: dict[str, int] = {}
for _size, _names in {
    1: "signed char, int8, int8_t, uchar, unsigned char, uint8, uint8_t",
    2: "short, short int, signed short, signed short int, int16, int16_t, "
    "ushort, unsigned short, unsigned short int, uint16, uint16_t",
    4: "int, signed int, int32, int32_t, uint, unsigned int, uint32, uint32_t, float",
    8: "longlong, long long, long long int, signed long long, signed long long int, int64, int64_t, "
    "ulonglong, unsigned long long, unsigned long long int, uint64, uint64_t, double",
}.items():
    _TYPES.update(dict.fromkeys((n.strip() for n in _names.split(",")), _size))
# Fields that make the reader look somewhere other than right after the header.
_ELSEWHERE = {"datafile", "byteskip", "lineskip"}


@dataclass(frozen=True)
class NrrdHeader:
    data_offset: int  # where the (possibly gzipped) data starts in the file
    encoding: str  # "raw" or "gzip"
    voxel_bytes: int  # sizes x type: what the data decodes to

    @property
    def read_bytes(self) -> int:
        """The voxels once read: NRRD has no rescaling, so what they decode to."""
        return self.voxel_bytes


def _key(name: str) -> str:
    """A field name as teem compares it: case and spaces do not matter ("Data File" is "datafile")."""
    return "".join(name.split()).lower()


def parse(head: bytes, label: str, max_voxel_bytes: int) -> NrrdHeader:
    """The verified header of a NRRD file whose first bytes (at least MAX_HEADER_BYTES, or all) are `head`."""
    end = _header_end(head, label)
    lines = head[:end].split(b"\n")
    if not _MAGIC.fullmatch(lines[0].rstrip(b"\r")):
        raise ConversionError(f"{label}: not a NRRD file (its first line is not NRRD0001..NRRD0005)")
    fields: dict[str, str] = {}
    for raw in lines[1:]:
        line = raw.rstrip(b"\r")
        if not line or line.startswith(b"#"):
            continue
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise ConversionError(f"{label}: the NRRD header has a line that is not ASCII") from None
        name, sep, value = text.partition(":")
        key = _key(name)
        if key in _ELSEWHERE:
            raise ConversionError(
                f"{label}: NRRD field {name.strip()!r} is refused: only data attached right after "
                "the header is read (no detached data file, no byte or line skip)"
            )
        if not sep or value.startswith("="):
            continue  # a comment-like line or a key/value pair (`key:=value`): not a field
        if key in fields:
            raise ConversionError(f"{label}: NRRD field {name.strip()!r} appears twice")
        fields[key] = value.strip()
    encoding = _encoding(fields, label)
    voxel_bytes = _voxel_bytes(fields, label)
    if voxel_bytes > max_voxel_bytes:
        raise ConversionTooLarge(
            f"{label}: its NRRD header describes {voxel_bytes} bytes of voxels (sizes "
            f"{fields['sizes']}, type {fields['type']}), over the conversion limit of "
            f"{max_voxel_bytes} bytes (MAX_CONVERT_BYTES)"
        )
    return NrrdHeader(end, encoding, voxel_bytes)


def _header_end(head: bytes, label: str) -> int:
    """Offset just after the blank line that ends the header, within the size and line bounds."""
    match = re.search(rb"\n\r?\n", head[:MAX_HEADER_BYTES])
    if match is None:
        raise ConversionError(
            f"{label}: the NRRD header has no blank line ending it within {MAX_HEADER_BYTES} bytes "
            "(a detached header, or a header too long)"
        )
    if head.count(b"\n", 0, match.start()) >= MAX_HEADER_LINES:
        raise ConversionError(f"{label}: the NRRD header has more than {MAX_HEADER_LINES} lines")
    return match.end()


def _encoding(fields: dict[str, str], label: str) -> str:
    value = fields.get("encoding")
    if value is None:
        raise ConversionError(f"{label}: the NRRD header has no 'encoding' field")
    encoding = ENCODINGS.get(value.lower())
    if encoding is None:
        raise ConversionError(f"{label}: NRRD encoding {value!r} is not accepted: only {', '.join(ENCODINGS)}")
    return encoding


def _voxel_bytes(fields: dict[str, str], label: str) -> int:
    type_name = " ".join(fields.get("type", "").split()).lower()
    size = _TYPES.get(type_name)
    if size is None:
        raise ConversionError(f"{label}: NRRD type {fields.get('type')!r} is missing or not a scalar type")
    try:
        dimension = int(fields["dimension"])
        sizes = [int(s) for s in fields["sizes"].split()]
    except (KeyError, ValueError):
        raise ConversionError(f"{label}: the NRRD 'dimension' and 'sizes' fields are missing or not integers") from None
    if not 1 <= dimension <= 16 or len(sizes) != dimension or any(s < 1 for s in sizes):
        raise ConversionError(
            f"{label}: NRRD sizes {fields['sizes']!r} do not match dimension {dimension} (1..16 positive sizes)"
        )
    return math.prod(sizes) * size
