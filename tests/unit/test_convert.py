"""Conversion between .nrrd, .nii and .nii.gz on a real volume, checked with nibabel and pynrrd, not SimpleITK."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import nibabel
import nrrd
import numpy as np
import pytest

from inferserver.sessions.errors import InvalidInput
from inferserver.sessions.uploads import receive_file
from inferserver.volumes import convert
from inferserver.volumes.convert import Converter, ConvertLimits

from ..conftest import lps_to_ras_affine, real_volume, write_real_nrrd

FORMATS = [".nii", ".nii.gz", ".nrrd"]


def source_file(tmp: Path, fmt: str) -> Path:
    """The real volume in `fmt`: nibabel's own file, its gzip, or pynrrd's NRRD of it."""
    path = tmp / f"source{fmt}"
    if fmt == ".nii":
        shutil.copyfile(real_volume(), path)
    elif fmt == ".nii.gz":
        path.write_bytes(gzip.compress(real_volume().read_bytes()))
    else:
        write_real_nrrd(path)
    return path


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and RAS affine, read by nibabel (NIfTI) or pynrrd (NRRD)."""
    if path.name.endswith(".nrrd"):
        data, header = nrrd.read(str(path))
        return data, lps_to_ras_affine(header)
    image = nibabel.load(path)
    assert image.dataobj.slope == 1 and image.dataobj.inter == 0  # the stored type is the voxel type
    return np.asanyarray(image.dataobj), image.affine


def no_disk_check(label: str, coming: int) -> None:
    return None


@pytest.fixture
def converter(tmp_path_factory: pytest.TempPathFactory) -> Converter:
    """The server's converter with its default limits (a real child process per conversion)."""
    limits = ConvertLimits(1 << 30, 300, 2, tmp_path_factory.mktemp("slots"))
    return Converter(limits, no_disk_check)


@pytest.fixture(scope="module")
def original() -> tuple[np.ndarray, np.ndarray]:
    image = nibabel.load(real_volume())
    return np.asanyarray(image.dataobj), image.affine


@pytest.mark.parametrize("target", FORMATS)
@pytest.mark.parametrize("source", FORMATS)
async def test_each_pair_keeps_voxels_type_and_geometry(
    tmp_path: Path, source: str, target: str, original: tuple, converter: Converter
) -> None:
    if source == target:
        assert not convert.convertible(source, target)
        return
    assert convert.convertible(source, target)
    src = source_file(tmp_path, source)
    dest = await converter.converted_copy(src, target, "output v")
    data, affine = read_volume(dest)
    want_data, want_affine = original
    assert (data.dtype.kind, data.dtype.itemsize) == ("i", 2) and data.shape == (33, 41, 25)  # either byte order
    assert np.array_equal(data, want_data)
    np.testing.assert_allclose(affine, want_affine, atol=1e-4)  # spacing, origin and direction
    assert dest.read_bytes().startswith(b"\x1f\x8b") == (target == ".nii.gz")
    lock = f".{src.name}.as{target}.lock"
    assert names(tmp_path) == {src.name, dest.name, lock}  # no helper link left


def test_convertible_knows_only_the_three_formats() -> None:
    assert convert.available()
    assert convert.convertible(".NRRD", ".nii.gz")
    assert not convert.convertible(".mha", ".nii")
    assert not convert.convertible(".nrrd.gz", ".nii")
    assert not convert.convertible(None, ".nii")


def broken_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    whole = real_volume().read_bytes()
    gz = gzip.compress(whole)
    files = {
        "truncated gzip": (tmp / "trunc.nii.gz", gz[: len(gz) // 2]),
        "bad gzip checksum": (tmp / "crc.nii.gz", gz[:-8] + b"\0\0\0\0" + gz[-4:]),
        "NIfTI header over garbage": (tmp / "garbage.nii", whole[:352] + b"garbage" * 10),
        "NIfTI header with zero dims": (tmp / "dims.nii", whole[:40] + b"\0" * 16 + whole[56:]),
        "NRRD header over garbage": (
            tmp / "garbage.nrrd",
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 33 41 25\nencoding: raw\n\nxx",
        ),
    }
    for path, content in files.values():
        path.write_bytes(content)
    return {name: (path, convert.format_of(path) or "") for name, (path, content) in files.items()}


@pytest.mark.parametrize(
    "case",
    [
        "truncated gzip",
        "bad gzip checksum",
        "NIfTI header over garbage",
        "NIfTI header with zero dims",
        "NRRD header over garbage",
    ],
)
async def test_a_file_that_is_not_what_it_claims_is_refused(tmp_path: Path, case: str, converter: Converter) -> None:
    path, fmt = broken_files(tmp_path)[case]
    target = ".nrrd" if fmt != ".nrrd" else ".nii"
    before = names(tmp_path)
    with pytest.raises(convert.ConversionError) as caught:
        await converter.converted_copy(path, target, "output v")
    assert str(caught.value).startswith("output v: ")  # a reason for the client, naming the file
    assert names(tmp_path) - before == {f".{path.name}.as{target}.lock"}


async def chunks_of(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_upload_of_another_format_is_converted_and_hashed_as_received(
    tmp_path: Path, original: tuple, converter: Converter
) -> None:
    body = write_real_nrrd(tmp_path / "in.nrrd").read_bytes()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dest = inputs / "ct.nii.gz"
    result = await receive_file(
        chunks_of(body),
        dest,
        label="input ct",
        expected_ext=".nii.gz",
        check_types=True,
        convert=True,
        converter=converter,
    )
    assert result.sha256 == hashlib.sha256(body).hexdigest() and result.size == len(body)
    data, affine = read_volume(dest)
    assert np.array_equal(data, original[0]) and np.allclose(affine, original[1], atol=1e-4)
    assert [p.name for p in inputs.iterdir()] == ["ct.nii.gz"]


async def test_without_convert_the_other_format_is_refused(tmp_path: Path, converter: Converter) -> None:
    body = write_real_nrrd(tmp_path / "in.nrrd").read_bytes()
    with pytest.raises(InvalidInput, match=r"must be a \.nii\.gz file, but the upload is \.nrrd"):
        await receive_file(
            chunks_of(body),
            tmp_path / "ct.nii.gz",
            label="input ct",
            expected_ext=".nii.gz",
            check_types=True,
            convert=False,
            converter=converter,
        )


@pytest.mark.parametrize("case", ["truncated gzip", "NIfTI header over garbage"])
async def test_refused_conversion_keeps_the_previous_upload_and_leaves_no_partial_file(
    tmp_path: Path, case: str, converter: Converter
) -> None:
    path, fmt = broken_files(tmp_path)[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    dest = inputs / "volume.nrrd"
    dest.write_bytes(b"the previous upload")
    with pytest.raises(InvalidInput) as caught:
        await receive_file(
            chunks_of(path.read_bytes()),
            dest,
            label="input volume",
            expected_ext=".nrrd",
            check_types=True,
            convert=True,
            converter=converter,
        )
    assert f"claims to be {fmt}" in str(caught.value) and "cannot be converted to .nrrd" in str(caught.value)
    assert [p.name for p in inputs.iterdir()] == ["volume.nrrd"] and dest.read_bytes() == b"the previous upload"


async def test_output_copy_is_converted_once_then_served_from_the_cache(
    tmp_path: Path, original: tuple, converter: Converter
) -> None:
    output = source_file(tmp_path, ".nii.gz")
    cached = await converter.converted_copy(output, ".nrrd", "output v")
    assert cached.parent == tmp_path and cached.name.endswith(".nrrd")
    data, affine = read_volume(cached)
    assert np.array_equal(data, original[0]) and np.allclose(affine, original[1], atol=1e-4)
    stamp = cached.stat().st_mtime_ns
    assert await converter.converted_copy(output, ".nrrd", "output v") == cached and cached.stat().st_mtime_ns == stamp
    assert await converter.converted_copy(output, ".nii.gz", "output v") == output  # its own format: the file itself
    with pytest.raises(convert.ConversionError):
        await converter.converted_copy(tmp_path / "argv.bin", ".nrrd", "output v")
