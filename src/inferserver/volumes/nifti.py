"""NIfTI-1/-2 header verification: the one source of how many bytes a NIfTI file must hold.

Works on the first HEAD_BYTES of the (decompressed) stream only and never allocates by the header's claim.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from .errors import ConversionError, ConversionTooLarge

HEAD_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 one is 348
MAX_VOX_OFFSET = 1 << 20  # header plus extensions; more is not a volume anyone writes

# datatype code -> bytes per voxel (nifti1.h). The element size comes from here, never from bitpix.
ELEMENT_SIZE = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
    1536: 16, 1792: 16, 2048: 32, 2304: 4,
}  # fmt: skip

_SINGLE_FILE = {1: b"n+1\x00", 2: b"n+2\x00"}
_PAIR = {1: b"ni1\x00", 2: b"ni2\x00"}


@dataclass(frozen=True)
class NiftiHeader:
    version: int  # 1 or 2
    vox_offset: int  # where the voxels start in the (decompressed) stream
    voxel_bytes: int  # dims x element size
    read_bytes: int  # the voxels once read: ITK reads a volume with scl_slope/scl_inter as float (or double)

    @property
    def total(self) -> int:
        """Bytes the (decompressed) stream must hold: header, extensions and every voxel."""
        return self.vox_offset + self.voxel_bytes


def parse(head: bytes, label: str, max_voxel_bytes: int) -> NiftiHeader:
    """The verified header of a single-file NIfTI volume whose stream starts with `head`.

    ConversionError names the field that is wrong; ConversionTooLarge when the voxels exceed `max_voxel_bytes`.
    """
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(order + "i", head, 0)[0] == 348:
            version, magic = 1, head[344:348]
            dims = struct.unpack_from(order + "8h", head, 40)
            datatype, bitpix = struct.unpack_from(order + "2h", head, 70)
            offset_field: float = struct.unpack_from(order + "f", head, 108)[0]
            slope, inter = struct.unpack_from(order + "2f", head, 112)
            break
        if len(head) >= 540 and struct.unpack_from(order + "i", head, 0)[0] == 540:
            version, magic = 2, head[4:8]
            datatype, bitpix = struct.unpack_from(order + "2h", head, 12)
            dims = struct.unpack_from(order + "8q", head, 16)
            offset_field = float(struct.unpack_from(order + "q", head, 168)[0])
            slope, inter = struct.unpack_from(order + "2d", head, 176)
            break
    else:
        raise ConversionError(f"{label}: no NIfTI header (sizeof_hdr is neither 348 nor 540 in either byte order)")
    if magic == _PAIR[version]:
        raise ConversionError(
            f"{label}: NIfTI magic {magic[:3].decode()!r} is a .hdr/.img pair whose voxels are in "
            "a separate file; only single-file NIfTI (n+1, n+2) is accepted"
        )
    if magic != _SINGLE_FILE[version]:
        raise ConversionError(f"{label}: NIfTI magic {magic!r} is not {_SINGLE_FILE[version]!r}")
    size = ELEMENT_SIZE.get(datatype)
    if size is None:
        raise ConversionError(f"{label}: NIfTI datatype {datatype} is not a known voxel type")
    if bitpix != size * 8:
        raise ConversionError(f"{label}: NIfTI bitpix {bitpix} disagrees with datatype {datatype} ({size * 8} bits)")
    rank = dims[0]
    if not 1 <= rank <= 7 or any(d < 1 for d in dims[1 : rank + 1]):
        raise ConversionError(f"{label}: NIfTI dim {list(dims)} is invalid (dim[0] 1..7, each used dim >= 1)")
    header_size = 348 if version == 1 else 540
    if not (
        math.isfinite(offset_field)
        and offset_field == int(offset_field)
        and header_size <= offset_field <= MAX_VOX_OFFSET
    ):
        raise ConversionError(
            f"{label}: NIfTI vox_offset {offset_field} is not a whole number of bytes between "
            f"{header_size} and {MAX_VOX_OFFSET}"
        )
    voxels = math.prod(dims[1 : rank + 1])
    rescaled = math.isfinite(slope) and slope != 0 and (slope != 1 or inter != 0)
    read_size = max(size, 4) if rescaled else size
    if voxels * read_size > max_voxel_bytes:
        as_read = f", read as {read_size}-byte floats (scl_slope {slope}, scl_inter {inter})" if rescaled else ""
        raise ConversionTooLarge(
            f"{label}: its NIfTI header describes {voxels * read_size} bytes of voxels "
            f"({' x '.join(map(str, dims[1 : rank + 1]))}, {size} bytes each{as_read}), over the "
            f"conversion limit of {max_voxel_bytes} bytes (MAX_CONVERT_BYTES)"
        )
    return NiftiHeader(version, int(offset_field), voxels * size, voxels * read_size)
