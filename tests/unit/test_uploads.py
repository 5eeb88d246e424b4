"""Receiving an input upload: exact bytes and hash, type refusal, and atomic replacement on every failure."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from inferserver.runner.filewriter import WRITE_BLOCK
from inferserver.sessions.errors import InvalidInput
from inferserver.sessions.uploads import UploadResult, receive_file
from inferserver.volumes.sniff import SNIFF_BYTES


def nifti_bytes(tmp_path: Path, shape: tuple[int, ...], name: str = "v.nii") -> bytes:
    data = np.random.default_rng(1).integers(0, 1000, shape, dtype=np.int16)
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path.read_bytes()


async def chunked(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """Cut `data` into chunks of the given sizes, repeating the pattern; 0 yields an empty chunk."""
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        i += 1
        yield data[pos : pos + size]
        pos += size
        await asyncio.sleep(0)


async def broken_after(data: bytes, good_bytes: int, chunk: int = 4096) -> AsyncIterator[bytes]:
    """A body whose client goes away after `good_bytes` bytes."""
    pos = 0
    while pos < good_bytes:
        yield data[pos : min(pos + chunk, good_bytes)]
        pos += chunk
    raise ConnectionResetError("client disconnected")


def leftovers(directory: Path, dest: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p != dest)


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    d = tmp_path / "inputs"
    d.mkdir()
    return d


@pytest.mark.parametrize(
    "sizes",
    [
        [1],  # one byte at a time, as the old server read under Werkzeug
        [7, 1, 1013],
        [SNIFF_BYTES - 1, 2],  # the sniffing window completes inside the second chunk
        [SNIFF_BYTES, SNIFF_BYTES],
        [0, 3, 0, 5000],  # empty chunks happen with chunked transfer encoding
    ],
)
async def test_bytes_and_hash_are_exact_for_awkward_chunks(tmp_path: Path, upload_dir: Path, sizes: list[int]) -> None:
    data = nifti_bytes(tmp_path, (10, 10, 10))
    dest = upload_dir / "input_vol.nii"
    result = await receive_file(
        chunked(data, sizes), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
    )
    assert result == UploadResult(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert dest.read_bytes() == data
    assert leftovers(upload_dir, dest) == []


@pytest.mark.parametrize("sizes", [[WRITE_BLOCK + 1], [65536], [WRITE_BLOCK * 3], [333333, 1]])
async def test_a_large_upload_across_write_blocks_is_exact(tmp_path: Path, upload_dir: Path, sizes: list[int]) -> None:
    data = gzip.compress(nifti_bytes(tmp_path, (128, 128, 100)), compresslevel=0)  # ~3.2 MB, gzip'd NIfTI
    assert len(data) > 2 * WRITE_BLOCK
    dest = upload_dir / "input_vol.nii.gz"
    result = await receive_file(
        chunked(data, sizes), dest, label="input input_vol", expected_ext=".nii.gz", check_types=True, convert=False
    )
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert dest.read_bytes() == data
    assert leftovers(upload_dir, dest) == []


async def test_a_wrong_type_names_both_types_and_leaves_nothing(tmp_path: Path, upload_dir: Path) -> None:
    data = gzip.compress(nifti_bytes(tmp_path, (20, 20, 20)))  # a .nii.gz uploaded for a .nii input
    dest = upload_dir / "input_vol.nii"
    with pytest.raises(InvalidInput) as caught:
        await receive_file(
            chunked(data, [1000]), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
        )
    message = str(caught.value)
    assert "input input_vol" in message
    assert ".nii file" in message
    assert ".nii.gz" in message
    assert not dest.exists()
    assert list(upload_dir.iterdir()) == []  # noqa: ASYNC240  # a near-empty tmp dir: O(1) local syscall


async def test_a_short_wrong_file_is_refused_too(upload_dir: Path) -> None:
    """Shorter than the sniffing window: checked at the end of the body."""
    dest = upload_dir / "input_vol.nii"
    with pytest.raises(InvalidInput) as caught:
        await receive_file(
            chunked(b"hello, not an image", [5]),
            dest,
            label="input input_vol",
            expected_ext=".nii",
            check_types=True,
            convert=False,
        )
    assert "an unknown type" in str(caught.value)
    assert list(upload_dir.iterdir()) == []  # noqa: ASYNC240  # a near-empty tmp dir: O(1) local syscall


async def test_an_empty_upload_for_a_checked_type_is_refused(upload_dir: Path) -> None:
    dest = upload_dir / "input_vol.nii"
    with pytest.raises(InvalidInput):
        await receive_file(
            chunked(b"", [1]), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
        )
    assert list(upload_dir.iterdir()) == []  # noqa: ASYNC240  # a near-empty tmp dir: O(1) local syscall


async def test_an_existing_dest_survives_a_refused_replacement(tmp_path: Path, upload_dir: Path) -> None:
    good = nifti_bytes(tmp_path, (10, 10, 10))
    dest = upload_dir / "input_vol.nii"
    await receive_file(
        chunked(good, [4096]), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
    )
    bad = b"NRRD0004\n" + b"x" * 3000
    with pytest.raises(InvalidInput, match=r"\.nrrd"):
        await receive_file(
            chunked(bad, [100]), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
        )
    assert dest.read_bytes() == good
    assert leftovers(upload_dir, dest) == []


async def test_a_second_good_upload_replaces_the_first(tmp_path: Path, upload_dir: Path) -> None:
    first = nifti_bytes(tmp_path, (10, 10, 10), "a.nii")
    second = nifti_bytes(tmp_path, (12, 10, 10), "b.nii")
    dest = upload_dir / "input_vol.nii"
    await receive_file(
        chunked(first, [4096]), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
    )
    result = await receive_file(
        chunked(second, [4096]), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False
    )
    assert dest.read_bytes() == second
    assert result.sha256 == hashlib.sha256(second).hexdigest()
    assert leftovers(upload_dir, dest) == []


@pytest.mark.parametrize("good_bytes", [0, 500, 8192, WRITE_BLOCK + 4096])
async def test_a_client_disconnect_leaves_no_temp_file_and_the_old_dest(
    tmp_path: Path, upload_dir: Path, good_bytes: int
) -> None:
    old = nifti_bytes(tmp_path, (10, 10, 10), "old.nii")
    new = nifti_bytes(tmp_path, (128, 128, 40), "new.nii")
    dest = upload_dir / "input_vol.nii"
    dest.write_bytes(old)
    with pytest.raises(ConnectionResetError):
        await receive_file(
            broken_after(new, good_bytes),
            dest,
            label="input input_vol",
            expected_ext=".nii",
            check_types=True,
            convert=False,
        )
    assert dest.read_bytes() == old
    assert leftovers(upload_dir, dest) == []


async def test_a_client_disconnect_without_an_old_dest_leaves_nothing(tmp_path: Path, upload_dir: Path) -> None:
    new = nifti_bytes(tmp_path, (64, 64, 64))
    dest = upload_dir / "input_vol.nii"
    with pytest.raises(ConnectionResetError):
        await receive_file(
            broken_after(new, 100000),
            dest,
            label="input input_vol",
            expected_ext=".nii",
            check_types=True,
            convert=False,
        )
    assert list(upload_dir.iterdir()) == []  # noqa: ASYNC240  # a near-empty tmp dir: O(1) local syscall


async def test_a_cancelled_upload_leaves_no_temp_file(tmp_path: Path, upload_dir: Path) -> None:
    """The request task is cancelled (server shutdown, client gone) while the body is still coming."""
    data = nifti_bytes(tmp_path, (64, 64, 64))
    dest = upload_dir / "input_vol.nii"
    dest.write_bytes(b"old")
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield data[:5000]
        stalled.set()
        await asyncio.Event().wait()
        yield b""

    task = asyncio.create_task(
        receive_file(stalling(), dest, label="input input_vol", expected_ext=".nii", check_types=True, convert=False)
    )
    async with asyncio.timeout(2):
        await stalled.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dest.read_bytes() == b"old"
    assert leftovers(upload_dir, dest) == []


async def test_check_types_false_accepts_anything(tmp_path: Path, upload_dir: Path) -> None:
    for body in [b"", b"plain text", gzip.compress(nifti_bytes(tmp_path, (8, 8, 8))), b"NRRD0004\n" * 500]:
        dest = upload_dir / "input_vol.nii"
        result = await receive_file(
            chunked(body, [777]), dest, label="input input_vol", expected_ext=".nii", check_types=False, convert=False
        )
        assert dest.read_bytes() == body
        assert result == UploadResult(hashlib.sha256(body).hexdigest(), len(body))
    assert leftovers(upload_dir, upload_dir / "input_vol.nii") == []


async def test_an_unsniffable_extension_is_taken_on_trust(upload_dir: Path) -> None:
    dest = upload_dir / "points.fcsv"
    body = b"# Markups fiducial file version = 4.10\n1,2,3\n"
    result = await receive_file(
        chunked(body, [10]), dest, label="input points", expected_ext=".fcsv", check_types=True, convert=False
    )
    assert dest.read_bytes() == body
    assert result.size == len(body)
