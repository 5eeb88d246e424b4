"""Header sniffing against real files written by nibabel, plus hand-made NRRD/MetaImage heads."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inferserver.volumes.sniff import SNIFF_BYTES, CheckResult, HeadCollector, check_filetype, sniff


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(SNIFF_BYTES)


def _nifti1(path: Path, shape: tuple[int, ...] = (4, 5, 6), random: bool = False) -> Path:
    data = np.random.default_rng(0).random(shape, dtype=np.float32) if random else np.zeros(shape, np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_nifti1_plain_file(tmp_path: Path) -> None:
    assert sniff(_head(_nifti1(tmp_path / "a.nii"))) == ".nii"


def test_nifti1_gzip_written_by_nibabel(tmp_path: Path) -> None:
    path = _nifti1(tmp_path / "a.nii.gz")
    assert _head(path)[:2] == b"\x1f\x8b"
    assert sniff(_head(path)) == ".nii.gz"


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("magic", [b"n+1", b"ni1"])
def test_nifti1_both_endiannesses_and_magics(endian: str, magic: bytes) -> None:
    header = nib.Nifti1Header().as_byteswapped(endian)
    header["magic"] = magic
    raw = header.binaryblock
    assert raw[:4] == (b"\x00\x00\x01\x5c" if endian == ">" else b"\x5c\x01\x00\x00")
    assert sniff(raw) == ".nii"
    assert sniff(gzip.compress(raw)) == ".nii.gz"


def test_nifti1_wrong_magic_is_not_nifti() -> None:
    raw = bytearray(nib.Nifti1Header().binaryblock)
    raw[344:348] = b"xx1\x00"
    assert sniff(bytes(raw)) is None


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nifti2(tmp_path: Path, endian: str) -> None:
    path = tmp_path / "b.nii"
    nib.save(nib.Nifti2Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), path)
    assert sniff(_head(path)) == ".nii"
    raw = nib.Nifti2Header().as_byteswapped(endian).binaryblock
    assert sniff(raw) == ".nii"
    assert sniff(gzip.compress(raw)) == ".nii.gz"


NRRD = (
    b"NRRD0004\n# Complete NRRD file format specification at:\n"
    b"type: short\ndimension: 3\nsizes: 4 5 6\nencoding: raw\n\n"
)
MHA = b"ObjectType = Image\nNDims = 3\nDimSize = 4 5 6\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"


def test_nrrd_and_metaimage() -> None:
    assert sniff(NRRD + bytes(200)) == ".nrrd"
    assert sniff(gzip.compress(NRRD + bytes(200))) == ".nrrd.gz"
    assert sniff(MHA) == ".mha"
    assert sniff(gzip.compress(MHA)) == ".mha.gz"


def test_gzip_of_unknown_content_is_gz() -> None:
    assert sniff(gzip.compress(b"hello world" * 100)) == ".gz"
    assert sniff(b"\x1f\x8b") == ".gz"  # only the magic: nothing to decompress, still gzip
    assert sniff(b"\x1f\x8b" + os.urandom(1000)) == ".gz"  # corrupt deflate data


def test_nothing_matches() -> None:
    assert sniff(b"") is None
    assert sniff(b"\x5c\x01") is None
    assert sniff(np.random.default_rng(1).bytes(SNIFF_BYTES)) is None
    assert sniff(bytes(SNIFF_BYTES)) is None


def test_truncated_head_of_big_nii_gz(tmp_path: Path) -> None:
    path = _nifti1(tmp_path / "big.nii.gz", shape=(96, 96, 96), random=True)
    assert path.stat().st_size > 2_000_000
    head = _head(path)
    assert len(head) == SNIFF_BYTES
    assert sniff(head) == ".nii.gz"


def test_gzip_head_needs_only_a_small_prefix(tmp_path: Path) -> None:
    # nibabel's gzip header carries no file name, so the NIfTI header starts within a few bytes.
    head = _head(_nifti1(tmp_path / "a.nii.gz", random=True))
    assert sniff(head[:400]) == ".nii.gz"


class TestCheckFiletype:
    nii = nib.Nifti1Header().binaryblock
    nii_gz = gzip.compress(nii)

    def test_matching_type_is_acceptable(self) -> None:
        assert check_filetype(self.nii, ".nii", check=True, convert=False) == CheckResult(".nii", True, False)
        assert check_filetype(self.nii_gz, ".nii.gz", check=True, convert=False).acceptable
        assert check_filetype(NRRD, ".nrrd", check=True, convert=False).acceptable

    def test_extension_is_case_insensitive(self) -> None:
        assert check_filetype(self.nii_gz, ".NII.GZ", check=True, convert=False).acceptable

    def test_mismatch_is_refused(self) -> None:
        result = check_filetype(self.nii_gz, ".nii", check=True, convert=False)
        assert result == CheckResult(".nii.gz", acceptable=False, can_convert=False)
        assert not check_filetype(self.nii, ".nii.gz", check=True, convert=False).acceptable
        assert not check_filetype(b"garbage", ".nrrd", check=True, convert=False).acceptable

    def test_check_off_accepts_anything(self) -> None:
        assert check_filetype(b"garbage", ".nii", check=False, convert=False) == CheckResult(None, True, False)

    def test_unsniffable_extensions_are_taken_on_trust(self) -> None:
        assert check_filetype(b"garbage", ".mha", check=True, convert=False).acceptable
        assert check_filetype(self.nii, ".nrrd.gz", check=True, convert=False).acceptable  # not in SNIFFABLE
        assert check_filetype(b"", ".json", check=True, convert=False).acceptable


class TestHeadCollector:
    def test_keeps_only_the_head(self) -> None:
        collector = HeadCollector()
        data = os.urandom(5000)
        for i in range(0, len(data), 300):
            collector.feed(data[i : i + 300])
        assert collector.complete
        assert collector.head == data[:SNIFF_BYTES]

    def test_short_stream_is_incomplete(self) -> None:
        collector = HeadCollector()
        collector.feed(b"abc")
        collector.feed(b"")
        collector.feed(b"def")
        assert not collector.complete
        assert collector.head == b"abcdef"

    def test_one_big_chunk(self) -> None:
        collector = HeadCollector()
        collector.feed(bytes(range(256)) * 10)
        assert collector.complete and len(collector.head) == SNIFF_BYTES
