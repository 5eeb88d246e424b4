"""The pieces resumable uploads are made of: BlockWriter resuming at an offset, place_file, the tus header parsers."""

from __future__ import annotations

import base64
import gzip
import hashlib
from pathlib import Path

import pytest

from inferserver.api.envelope import ApiError
from inferserver.api.tus import _checksum, _metadata
from inferserver.config import SettingsError, load_settings
from inferserver.runner.filewriter import WRITE_BLOCK, BlockWriter
from inferserver.sessions.errors import InvalidInput
from inferserver.sessions.uploads import place_file


async def test_a_resumed_writer_keeps_the_prefix_cuts_the_rest_and_hashes_only_new_bytes(tmp_path: Path) -> None:
    path = tmp_path / "partial"
    path.write_bytes(b"acknowledged" + b"never acknowledged")
    chunk = hashlib.sha1()
    running = hashlib.sha256(b"acknowledged")
    new = b"x" * (WRITE_BLOCK + 17)
    async with BlockWriter(path, start=len(b"acknowledged"), hashers=[chunk, running]) as out:
        await out.write(new[:100])
        await out.write(new[100:])
        await out.sync()
    assert path.read_bytes() == b"acknowledged" + new
    assert out.size == len(new)
    assert chunk.digest() == hashlib.sha1(new).digest()
    assert running.hexdigest() == hashlib.sha256(b"acknowledged" + new).hexdigest()


async def test_a_writer_without_start_still_truncates(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old content")
    async with BlockWriter(path, sha256=True) as out:
        await out.write(b"new")
    assert path.read_bytes() == b"new"
    assert out.sha256 == hashlib.sha256(b"new").hexdigest()


def nifti_gz(tmp_path: Path) -> Path:
    header = bytearray(352)
    header[0:4] = (348).to_bytes(4, "little")
    header[344:348] = b"n+1\0"
    path = tmp_path / "upload"
    path.write_bytes(gzip.compress(bytes(header)) + b"\0" * 5000)
    return path


async def test_place_file_links_the_source_into_place_and_leaves_it(tmp_path: Path) -> None:
    source = nifti_gz(tmp_path)
    dest = tmp_path / "inputs" / "input_vol.nii.gz"
    dest.parent.mkdir()
    result = await place_file(
        source, dest, sha256="abc", label="input input_vol", expected_ext=".nii.gz", check_types=True
    )
    assert (result.sha256, result.size) == ("abc", source.stat().st_size)
    assert dest.read_bytes() == source.read_bytes()
    assert source.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["input_vol.nii.gz"]


async def test_place_file_refuses_a_wrong_type_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "upload"
    source.write_bytes(b"text, not a volume\n" * 100)
    dest = tmp_path / "inputs" / "input_vol.nii.gz"
    dest.parent.mkdir()
    with pytest.raises(InvalidInput, match=r"input input_vol must be a \.nii\.gz file, but the upload is an unknown"):
        await place_file(source, dest, sha256="abc", label="input input_vol", expected_ext=".nii.gz", check_types=True)
    assert list(dest.parent.iterdir()) == []
    assert source.exists()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_upload_metadata_is_decoded() -> None:
    header = f"session_id {b64('abc')}, input {b64('input_vol')},filename {b64('ct scan é.nii.gz')}"
    assert _metadata(header) == {"session_id": "abc", "input": "input_vol", "filename": "ct scan é.nii.gz"}


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "Upload-Metadata is required: it must name session_id and input"),
        ("session_id !!!", "Upload-Metadata: the value of 'session_id' is not base64 of UTF-8 text"),
        (
            "input " + base64.b64encode(b"\xff").decode(),
            "Upload-Metadata: the value of 'input' is not base64 of UTF-8 text",
        ),
    ],
)
def test_bad_upload_metadata_is_400_naming_the_key(header: str | None, detail: str) -> None:
    with pytest.raises(ApiError) as refused:
        _metadata(header)
    assert (refused.value.status, refused.value.detail) == (400, detail)


def test_upload_checksum_is_parsed_and_checked() -> None:
    digest = hashlib.sha256(b"chunk").digest()
    parsed = _checksum(f"sha256 {base64.b64encode(digest).decode()}")
    assert parsed is not None and (parsed.algorithm, parsed.digest) == ("sha256", digest)
    assert _checksum(None) is None
    with pytest.raises(ApiError, match="not base64"):
        _checksum("sha1 ***")


def test_tus_expiry_defaults_to_a_day_and_must_be_positive(tmp_path: Path) -> None:
    assert load_settings(SESSION_PATH=tmp_path).TUS_EXPIRY == 86400
    assert load_settings(SESSION_PATH=tmp_path, TUS_EXPIRY="90").TUS_EXPIRY == 90
    with pytest.raises(SettingsError, match="TUS_EXPIRY"):
        load_settings(SESSION_PATH=tmp_path, TUS_EXPIRY="0")
