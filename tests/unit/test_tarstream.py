"""tar_stream and extract_single_file against Python's own tarfile, fed in awkward chunk sizes."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from inferserver.runner.tarstream import (
    ArchiveError,
    EmptyArchive,
    NotARegularFile,
    SourceChanged,
    TarMember,
    TruncatedArchive,
    WriteFailed,
    extract_single_file,
    parents_of,
    tar_stream,
)

LONG_NAME = "data/" + "/".join(["a_rather_long_directory_name"] * 5) + "/input.nii.gz"
assert len(LONG_NAME) > 100


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _tar(members: Iterable[tuple[str, bytes | None]], fmt: int) -> bytes:
    """An archive made by tarfile: (name, data) for files, (name, None) for directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- parents_of -------------------------------------------------------------------------------


def test_parents_of() -> None:
    assert parents_of("data/sub/x.nii") == ["data", "data/sub"]
    assert parents_of("x.nii") == []
    assert parents_of("a/b") == ["a"]


def test_member_defaults_and_name_checks(tmp_path: Path) -> None:
    assert TarMember("data").mode == 0o1777
    assert TarMember("data/x", tmp_path).mode == 0o644
    assert TarMember("data/x", tmp_path, mode=0o600).mode == 0o600
    for bad in ("", "/etc/passwd", "../x", "data/../../x"):
        with pytest.raises(ValueError):
            TarMember(bad)


# --- tar_stream -------------------------------------------------------------------------------

SIZES = [0, 1, 511, 512, 513, 3 * 1024 * 1024 + 17]


async def test_tar_stream_round_trips_through_tarfile(tmp_path: Path) -> None:
    members: list[TarMember] = [TarMember("data"), TarMember("data/sub", mode=0o755)]
    contents: dict[str, bytes] = {}
    for size in SIZES:
        path = tmp_path / f"f{size}"
        path.write_bytes(os.urandom(size))
        name = f"data/sub/f{size}.bin"
        members.append(TarMember(name, path))
        contents[name] = path.read_bytes()
    long_src = tmp_path / "long"
    long_src.write_bytes(b"long name payload")
    members += [TarMember(p) for p in parents_of(LONG_NAME)[1:]]
    members.append(TarMember(LONG_NAME, long_src, mode=0o600))
    contents[LONG_NAME] = long_src.read_bytes()

    archive = await _collect(tar_stream(members, chunk_size=65536))

    assert len(archive) % 512 == 0 and archive.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        infos = tar.getmembers()
        assert [i.name for i in infos] == [m.arcname for m in members]
        by_name = {i.name: i for i in infos}
        assert by_name["data"].isdir() and by_name["data"].mode == 0o1777
        assert by_name["data/sub"].mode == 0o755
        assert by_name[LONG_NAME].mode == 0o600
        for name, data in contents.items():
            info = by_name[name]
            assert info.isreg() and (info.uid, info.gid) == (0, 0)
            assert info.mtime > 0
            f = tar.extractfile(info)
            assert f is not None and f.read() == data


async def test_tar_stream_chunks_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1_000_000))
    sizes = [len(c) async for c in tar_stream([TarMember("f", path)], chunk_size=4096)]
    assert max(sizes) <= 4096


async def test_tar_stream_uses_pax_size_beyond_8_gib(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(9 * 1024**3 + 1)  # sparse: no disk space used
    stream = tar_stream([TarMember("big.nii", path)])
    header = await anext(stream)
    await stream.aclose()  # only the header is needed
    assert b" size=9663676417\n" in header
    assert tarfile.TarInfo.frombuf(header[-512:], "utf-8", "strict").name == "big.nii"


async def test_tar_stream_raises_when_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "growing"
    path.write_bytes(bytes(3 * 4096))
    with pytest.raises(SourceChanged, match="grew"):
        async for chunk in tar_stream([TarMember("g", path)], chunk_size=4096):
            if len(chunk) == 4096:
                with path.open("ab") as f:
                    f.write(b"x")


async def test_tar_stream_raises_when_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "shrinking"
    path.write_bytes(bytes(3 * 4096))
    with pytest.raises(SourceChanged, match="shrank"):
        async for chunk in tar_stream([TarMember("s", path)], chunk_size=4096):
            if len(chunk) == 4096:
                os.truncate(path, 4096)


async def test_tar_stream_refuses_special_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        await _collect(tar_stream([TarMember("p", fifo)]))


# --- extract_single_file ----------------------------------------------------------------------

CHUNK_SIZES = [1, 7, 511, 513, 65536]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("size", [0, 1, 512, 100_003])
async def test_extract_round_trip(tmp_path: Path, fmt: int, chunk: int, size: int) -> None:
    if chunk == 1 and size > 1000:
        size = 2000  # byte-at-a-time over 100 kB only costs time
    data = os.urandom(size)
    archive = _tar([("output.nii.gz", data)], fmt)
    dest = tmp_path / "out"
    assert await extract_single_file(_chunked(archive, chunk), dest) == size
    assert dest.read_bytes() == data


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
async def test_extract_long_name(tmp_path: Path, fmt: int, chunk: int) -> None:
    data = os.urandom(3000)
    archive = _tar([(LONG_NAME, data)], fmt)
    assert (b"././@LongLink" in archive) == (fmt == tarfile.GNU_FORMAT)
    dest = tmp_path / "out"
    assert await extract_single_file(_chunked(archive, chunk), dest) == len(data)
    assert dest.read_bytes() == data


async def test_extract_pax_with_global_header_and_non_ascii_name(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "hi"}) as tar:
        info = tarfile.TarInfo("sortie-é.nii")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    dest = tmp_path / "out"
    assert await extract_single_file(_chunked(buf.getvalue(), 100), dest) == 5
    assert dest.read_bytes() == b"hello"


async def test_extract_uses_pax_size_override(tmp_path: Path) -> None:
    # What a file over 8 GiB looks like: the real size lives only in the PAX record.
    data = os.urandom(1500)
    record = b"size=1500\n"
    record = str(len(record) + 3).encode() + b" " + record  # "13 size=1500\n"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    member = tarfile.TarInfo("big.nii")
    member.size = 0  # ustar size field left empty
    archive = (
        pax.tobuf(tarfile.USTAR_FORMAT)
        + record.ljust(512, b"\0")
        + member.tobuf(tarfile.USTAR_FORMAT)
        + data.ljust(2048, b"\0")
        + bytes(1024)
    )
    dest = tmp_path / "out"
    assert await extract_single_file(_chunked(archive, 333), dest) == 1500
    assert dest.read_bytes() == data


async def test_extract_round_trips_tar_stream(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2_000_001))
    dest = tmp_path / "dest"
    n = await extract_single_file(tar_stream([TarMember(LONG_NAME, src)], chunk_size=65536), dest)
    assert n == 2_000_001 and dest.read_bytes() == src.read_bytes()


async def test_extract_only_takes_first_member(tmp_path: Path) -> None:
    archive = _tar([("a", b"first"), ("b", b"second")], tarfile.PAX_FORMAT)
    dest = tmp_path / "out"
    assert await extract_single_file(_chunked(archive, 7), dest) == 5
    assert dest.read_bytes() == b"first"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
async def test_extract_directory_is_refused(tmp_path: Path, fmt: int) -> None:
    archive = _tar([("outputs", None), ("outputs/x.nii", b"data")], fmt)
    dest = tmp_path / "out"
    with pytest.raises(NotARegularFile, match="is a directory") as exc:
        await extract_single_file(_chunked(archive, 513), dest)
    assert exc.value.name == "outputs" and exc.value.kind == "is a directory"
    assert isinstance(exc.value, ValueError)
    assert not dest.exists()


async def test_extract_symlink_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(LONG_NAME)
        info.type, info.linkname = tarfile.SYMTYPE, "/" + "x" * 150
        tar.addfile(info)
    with pytest.raises(NotARegularFile, match="is a symbolic link") as exc:
        await extract_single_file(_chunked(buf.getvalue(), 7), tmp_path / "out")
    assert exc.value.name == LONG_NAME


@pytest.mark.parametrize("cut", [0, 100, 512, 600, 512 + 2999, 512 + 3000 + 10])
async def test_extract_truncated(tmp_path: Path, cut: int) -> None:
    archive = _tar([("x", os.urandom(3000))], tarfile.USTAR_FORMAT)
    with pytest.raises(TruncatedArchive):
        await extract_single_file(_chunked(archive[:cut], 511), tmp_path / "out")


async def test_extract_truncated_in_pax_header(tmp_path: Path) -> None:
    archive = _tar([(LONG_NAME, b"abc")], tarfile.PAX_FORMAT)
    with pytest.raises(TruncatedArchive):
        await extract_single_file(_chunked(archive[:700], 64), tmp_path / "out")


async def test_extract_empty_archive_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(EmptyArchive):
        await extract_single_file(_chunked(_tar([], tarfile.PAX_FORMAT), 512), tmp_path / "out")
    with pytest.raises(ArchiveError, match="corrupt"):
        await extract_single_file(_chunked(os.urandom(2048), 512), tmp_path / "out")


async def test_extract_asks_the_guard_before_opening_dest_and_as_it_writes(tmp_path: Path) -> None:
    data = _tar([("out.bin", bytes(300_000))], tarfile.PAX_FORMAT)
    calls: list[tuple[int, int]] = []

    def refuse(size: int, written: int) -> None:
        calls.append((size, written))
        raise RuntimeError("too big")

    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="too big"):
        await extract_single_file(_chunked(data, 65536), dest, refuse)
    assert calls == [(300_000, 0)]  # from the header alone
    assert not dest.exists()  # refused before the file was made

    calls.clear()
    assert await extract_single_file(_chunked(data, 65536), dest, lambda s, w: calls.append((s, w))) == 300_000
    assert calls[0] == (300_000, 0) and calls[-1] == (300_000, 300_000)
    assert [w for _, w in calls] == sorted(w for _, w in calls)


async def test_extract_write_errors_are_write_failed_and_stream_errors_stay_apart(tmp_path: Path) -> None:
    data = _tar([("out.bin", bytes(3 << 20))], tarfile.PAX_FORMAT)
    with pytest.raises(WriteFailed) as failed:
        await extract_single_file(_chunked(data, 65536), Path("/dev/full"))
    assert failed.value.error.errno == errno.ENOSPC
    assert str(failed.value) == "could not write /dev/full: No space left on device"

    async def reset_midway() -> AsyncIterator[bytes]:
        yield data[: 1 << 20]
        raise ConnectionResetError("the engine went away")  # an OSError, but not ours

    with pytest.raises(ConnectionResetError):
        await extract_single_file(reset_midway(), tmp_path / "out")
