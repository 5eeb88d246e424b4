"""The server's own NRRD and NIfTI header checks (volumes/nrrd.py, nifti.py, verify.py): what is refused and why,
and properties (hypothesis) that no header gets a detached file read or an allocation by its claim."""

from __future__ import annotations

import contextlib
import gzip
import struct
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferserver.volumes import nifti, nrrd
from inferserver.volumes.errors import ConversionError, ConversionTooLarge
from inferserver.volumes.verify import TRAILING_SLACK, verify

from ..conftest import real_volume

GiB = 1 << 30
LABEL = "input ct"


def nrrd_file(fields: str, data: bytes = b"") -> bytes:
    return b"NRRD0004\n" + fields.encode() + b"\n" + data


@pytest.mark.parametrize(
    "line",
    [
        "data file: /etc/passwd",
        "data file: ../../inferserver.db",
        "data file: /proc/self/environ",
        "data file: LIST\nx.raw",
        "data file: slice%03d.raw 0 9 1 2",
        "datafile: /etc/passwd",
        "Data File: /etc/passwd",
        "DATA  FILE: /dev/zero",
        "data file:=/etc/passwd",
        " data\tfile : /etc/passwd",
        "byte skip: -1",
        "line skip: 3",
    ],
)
def test_any_form_of_detached_data_is_refused_naming_the_field(line: str) -> None:
    head = nrrd_file(f"type: uint8\ndimension: 3\nsizes: 64 1 1\nencoding: raw\n{line}\n", b"x" * 64)
    with pytest.raises(ConversionError) as caught:
        nrrd.parse(head, LABEL, GiB)
    name = line.partition(":")[0].strip()
    assert str(caught.value).startswith(f"{LABEL}: NRRD field {name!r} is refused")


@pytest.mark.parametrize("encoding", ["bzip2", "bz2", "ascii", "text", "hex", "zstd"])
def test_encodings_not_counted_exactly_are_refused(encoding: str) -> None:
    head = nrrd_file(f"type: uint8\ndimension: 1\nsizes: 4\nencoding: {encoding}\n", b"1 2 3 4")
    with pytest.raises(
        ConversionError, match=rf"^{LABEL}: NRRD encoding '{encoding}' is not accepted: only raw, gzip, gz$"
    ):
        nrrd.parse(head, LABEL, GiB)


def test_a_header_without_its_blank_line_is_a_detached_header_and_refused() -> None:
    with pytest.raises(ConversionError, match="no blank line ending it within 65536 bytes"):
        nrrd.parse(b"NRRD0004\ntype: uint8\ndimension: 1\nsizes: 4\nencoding: raw\n", LABEL, GiB)
    with pytest.raises(ConversionError, match="no blank line ending it within 65536 bytes"):
        nrrd.parse(b"NRRD0004\n" + b"# pad\n" * 20000 + b"\n", LABEL, GiB)
    with pytest.raises(ConversionError, match="more than 1024 lines"):
        nrrd.parse(b"NRRD0004\n" + b"#\n" * 2000 + b"\n", LABEL, GiB)


def test_nrrd_over_the_cap_is_413_from_the_header_alone() -> None:
    head = nrrd_file("type: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: gzip\n")
    with pytest.raises(ConversionTooLarge) as caught:
        nrrd.parse(head, LABEL, GiB)
    assert str(caught.value) == (
        f"{LABEL}: its NRRD header describes 2147483648 bytes of voxels (sizes 1024 1024 1024, "
        "type short), over the conversion limit of 1073741824 bytes (MAX_CONVERT_BYTES)"
    )


def test_a_nrrd_good_header_gives_offset_encoding_and_size() -> None:
    head = nrrd_file("type: unsigned short\ndimension: 2\nsizes: 3 5\nencoding: gz\nendian: little\n")
    assert nrrd.parse(head, LABEL, GiB) == nrrd.NrrdHeader(len(head), "gzip", 30)


def nifti_bytes(shape: tuple[int, ...] = (4, 5, 6), dtype: str = "int16", endian: str = "<") -> bytes:
    image = nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4))
    image.header.set_data_dtype(np.dtype(dtype).newbyteorder(endian))
    image.header["vox_offset"] = 352  # what nibabel writes to a file
    return image.header.as_byteswapped(endian).binaryblock + b"\0" * 4 + np.zeros(shape, np.dtype(dtype)).tobytes()


def with_field(raw: bytes, offset: int, fmt: str, value: object) -> bytes:
    data = bytearray(raw)
    struct.pack_into("<" + fmt, data, offset, value)
    return bytes(data)


def test_nifti_element_size_comes_from_datatype_and_bitpix_must_agree(tmp_path: Path) -> None:
    raw = nifti_bytes()  # int16: datatype 4, bitpix 16, 120 voxels = 240 bytes after 352
    assert nifti.parse(raw, LABEL, GiB) == nifti.NiftiHeader(1, 352, 240, 240)
    lying = with_field(raw, 72, "h", 8)  # bitpix 8 claims half the bytes
    with pytest.raises(ConversionError, match=rf"^{LABEL}: NIfTI bitpix 8 disagrees with datatype 4 \(16 bits\)$"):
        nifti.parse(lying, LABEL, GiB)
    # short by datatype: bitpix and datatype both say float32, the file holds int16's worth
    short = with_field(with_field(raw, 70, "h", 16), 72, "h", 32)
    (tmp_path / "short.nii").write_bytes(short)
    with pytest.raises(
        ConversionError,
        match=rf"^{LABEL}: its header describes 832 bytes of header and voxels, "
        "but the file holds 592$",
    ):
        verify(tmp_path / "short.nii", ".nii", LABEL, GiB)


@pytest.mark.parametrize("magic", [b"ni1\x00"])
def test_nifti_pair_files_are_refused(magic: bytes) -> None:
    raw = bytearray(nifti_bytes())
    raw[344:348] = magic
    with pytest.raises(ConversionError, match=r"is a \.hdr/\.img pair whose voxels are in a separate file"):
        nifti.parse(bytes(raw), LABEL, GiB)


def test_nifti2_pair_is_refused_and_single_file_accepted() -> None:
    header = nib.Nifti2Header()
    header.set_data_shape((3, 3, 3))
    header["vox_offset"] = 544
    assert nifti.parse(header.binaryblock, LABEL, GiB).total == 544 + 27 * 4
    header["magic"] = b"ni2"
    with pytest.raises(ConversionError, match="pair"):
        nifti.parse(header.binaryblock, LABEL, GiB)


def test_nifti_bomb_over_the_cap_is_413() -> None:
    raw = nifti_bytes((1, 1, 1))
    raw = struct.pack("<8h", 3, 1024, 1024, 1024, 1, 1, 1, 1).join([raw[:40], raw[56:]])
    with pytest.raises(
        ConversionTooLarge,
        match=r"2147483648 bytes of voxels \(1024 x 1024 x 1024, 2 bytes each\), "
        r"over the conversion limit of 1073741824 bytes \(MAX_CONVERT_BYTES\)",
    ):
        nifti.parse(raw, LABEL, GiB)


def test_gzip_streams_are_counted_whole(tmp_path: Path) -> None:
    whole = real_volume().read_bytes()
    gz = gzip.compress(whole)
    cases = {
        "truncated": gz[:-100],
        "crc": gz[:-8] + b"\0\0\0\0" + gz[-4:],
        "too long": gzip.compress(whole + b"\0" * (TRAILING_SLACK + 1)),
    }
    for content in cases.values():
        (tmp_path / "v.nii.gz").write_bytes(content)
        with pytest.raises(ConversionError, match=f"^{LABEL}: the gzip stream"):
            verify(tmp_path / "v.nii.gz", ".nii.gz", LABEL, GiB)
    (tmp_path / "v.nii.gz").write_bytes(gzip.compress(whole[:1000]) + gzip.compress(whole[1000:]))  # two members
    assert verify(tmp_path / "v.nii.gz", ".nii.gz", LABEL, GiB).stream_bytes == len(whole)


def test_symlinks_and_special_files_are_never_opened(tmp_path: Path) -> None:
    (tmp_path / "link.nrrd").symlink_to("/etc/passwd")
    with pytest.raises(ConversionError, match="a symlink is never followed"):
        verify(tmp_path / "link.nrrd", ".nrrd", LABEL, GiB)
    with pytest.raises(ConversionError, match="not a regular file"):
        verify(Path("/dev/zero"), ".nrrd", LABEL, GiB)


# -- properties --------------------------------------------------------------------------------------------------

spaces = st.text(" \t", max_size=2)
DETACHED = ["data file", "datafile", "byte skip", "line skip"]


@st.composite
def nrrd_headers(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A mostly well-formed NRRD header (sizes up to 2^40 each); some name detached data in any case, spacing and
    separator, anywhere among the fields."""
    sizes = draw(st.lists(st.integers(-2, 1 << 40), min_size=1, max_size=4))
    lines = [
        f"type: {draw(st.sampled_from(['uint8', 'short', 'double', 'block', 'unsigned long long']))}",
        f"dimension: {len(sizes) if draw(st.integers(0, 9)) else 17}",
        "sizes: " + " ".join(map(str, sizes)),
        f"encoding: {draw(st.sampled_from(['raw', 'gzip', 'gz', 'bzip2', 'ascii']))}",
    ]
    lines += draw(
        st.lists(st.sampled_from(["endian: big", "# comment", "key:=value", "content: x", "kinds: domain"]), max_size=3)
    )
    detached = draw(st.integers(0, 2)) == 0
    if detached:
        name = draw(st.sampled_from(DETACHED))
        name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
        name = name.replace(" ", draw(st.text(" \t", min_size=1, max_size=3)))
        sep = draw(st.sampled_from([":", ": ", ":=", " : "]))
        value = draw(st.sampled_from(["/etc/passwd", "LIST", "x%03d.raw 0 9 1", "../../inferserver.db", "0"]))
        lines.insert(draw(st.integers(0, len(lines))), f"{draw(spaces)}{name}{sep}{value}")
    lines = draw(st.permutations(lines))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return ("NRRD0004" + newline + newline.join(lines) + newline + newline).encode(), detached


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nrrd_headers(), st.sampled_from([0, 1 << 20, 1 << 30, 1 << 62]))
def test_property_no_nrrd_header_gets_detached_data_or_an_allocation_past_the_bound(
    tmp_path: Path, case: tuple[bytes, bool], bound: int
) -> None:
    head, detached = case
    try:
        header = nrrd.parse(head, LABEL, bound)
    except ConversionError:
        accepted = False
    else:
        accepted = True
        assert header.voxel_bytes <= bound and header.data_offset == len(head)
    assert not (accepted and detached)
    # verify() on the header over a little gzip data: whatever the claim, it allocates a bounded amount.
    path = tmp_path / "v.nrrd"
    path.write_bytes(head + gzip.compress(b"\0" * 100_000))
    tracemalloc.start()
    with contextlib.suppress(ConversionError):
        verify(path, ".nrrd", LABEL, bound)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20


@st.composite
def nifti_headers(draw: st.DrawFn) -> bytes:
    """A NIfTI-1 or -2 header, mostly consistent (so that many are accepted), with any dims and offsets."""
    version = draw(st.sampled_from([1, 2]))
    order = draw(st.sampled_from("<>"))
    datatype = draw(st.sampled_from([*nifti.ELEMENT_SIZE, 0, 3, 4096]))
    size = nifti.ELEMENT_SIZE.get(datatype, 1)
    bitpix = size * 8 if draw(st.integers(0, 4)) else draw(st.sampled_from([0, 8, 16, 32, -8]))
    rank = draw(st.integers(1, 7)) if draw(st.integers(0, 4)) else draw(st.sampled_from([-1, 0, 8]))
    magic = draw(st.sampled_from([f"n+{version}", f"n+{version}", f"ni{version}", "n+3"])).encode() + b"\x00"
    slope, inter = (
        draw(st.sampled_from([0.0, 1.0, 2.5, -1.0, float("nan"), float("inf")])),
        draw(st.sampled_from([0.0, -1024.0])),
    )
    header_size = 348 if version == 1 else 540
    offset = header_size + 4 if draw(st.integers(0, 3)) else draw(st.integers(-(1 << 40), 1 << 40))
    if version == 1:
        dims = draw(st.lists(st.integers(-3, 32767), min_size=7, max_size=7))
        raw = bytearray(348)
        struct.pack_into(order + "i", raw, 0, 348)
        struct.pack_into(order + "8h", raw, 40, rank, *dims)
        struct.pack_into(order + "2h", raw, 70, datatype, bitpix)
        struct.pack_into(order + "f", raw, 108, float(offset))
        struct.pack_into(order + "2f", raw, 112, slope, inter)
        raw[344:348] = magic
    else:
        dims = draw(st.lists(st.integers(-3, 1 << 40), min_size=7, max_size=7))
        raw = bytearray(540)
        struct.pack_into(order + "i", raw, 0, 540)
        raw[4:8] = magic
        struct.pack_into(order + "2h", raw, 12, datatype, bitpix)
        struct.pack_into(order + "8q", raw, 16, rank, *dims)
        struct.pack_into(order + "q", raw, 168, offset)
        struct.pack_into(order + "2d", raw, 176, slope, inter)
    return bytes(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nifti_headers(), st.sampled_from([0, 1 << 20, 1 << 30, 1 << 62]), st.integers(0, 4096), st.booleans())
def test_property_no_nifti_header_gets_a_pair_file_or_an_allocation_past_the_bound(
    tmp_path: Path, raw: bytes, bound: int, data: int, gzipped: bool
) -> None:
    try:
        header = nifti.parse(raw, LABEL, bound)
    except ConversionError:
        header = None
    if header is not None:
        assert raw[344:348] == b"n+1\x00" if header.version == 1 else raw[4:8] == b"n+2\x00"
        assert header.voxel_bytes <= header.read_bytes <= bound and header.vox_offset <= nifti.MAX_VOX_OFFSET
    body = raw + b"\0" * data
    path = tmp_path / ("v.nii.gz" if gzipped else "v.nii")
    path.write_bytes(gzip.compress(body) if gzipped else body)
    tracemalloc.start()
    try:
        verified = verify(path, ".nii.gz" if gzipped else ".nii", LABEL, bound)
    except ConversionError:
        verified = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20
    if verified is not None:  # accepted only with every byte present
        assert header is not None and len(body) >= header.total
