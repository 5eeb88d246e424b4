"""Upload size, the disk's free-space reserve and the live-session limit: refused early, with the limit named."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from inferserver.sessions import quotas
from inferserver.sessions.errors import (
    AtCapacity,
    InsufficientStorage,
    Stalled,
    TooLarge,
)
from inferserver.sessions.quotas import UploadLimits, check_room, limited_upload
from inferserver.sessions.uploads import receive_file

MiB, GiB = 1 << 20, 1 << 30


class Body:
    """A request body that counts what was taken from it."""

    def __init__(self, chunks: int, size: int = 1024) -> None:
        self.chunks, self.size, self.taken = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.taken += self.size
            yield b"x" * self.size


class Disk:
    """os.statvfs for a disk of `free` bytes, less what the test says was written."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked = 0

    def statvfs(self, path: os.PathLike[str] | str) -> SimpleNamespace:
        self.asked += 1
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    fake = Disk(free=100 * GiB)
    monkeypatch.setattr(os, "statvfs", fake.statvfs)
    return fake


def limits(max_bytes: int = 10 * 1024, reserve: int = GiB, idle: float = 60.0) -> UploadLimits:
    return UploadLimits(max_bytes=max_bytes, disk_reserve=reserve, disk=Path("/sessions"), idle_timeout=idle)


async def take(body: AsyncIterator[bytes]) -> int:
    return sum([len(chunk) async for chunk in body])


async def test_a_declared_size_over_the_limit_is_refused_before_any_byte(disk: Disk) -> None:
    body = Body(20)
    with pytest.raises(TooLarge) as caught:
        await take(limited_upload(aiter(body), 20 * 1024, limits(), "input volume"))
    assert (
        str(caught.value)
        == "input volume is over the upload limit of 10 KiB (MAX_UPLOAD_BYTES): its Content-Length is 20480 bytes"
    )
    assert body.taken == 0


async def test_a_chunked_body_is_refused_once_it_passes_the_limit(disk: Disk) -> None:
    body = Body(20)
    with pytest.raises(TooLarge) as caught:
        await take(limited_upload(aiter(body), None, limits(), "input volume"))
    assert str(caught.value) == "input volume is over the upload limit of 10 KiB (MAX_UPLOAD_BYTES)"
    assert body.taken == 11 * 1024  # stopped at the first chunk past the limit


async def test_exactly_the_limit_passes(disk: Disk) -> None:
    assert await take(limited_upload(aiter(Body(10)), 10 * 1024, limits(), "input volume")) == 10 * 1024
    assert await take(limited_upload(aiter(Body(10)), None, limits(), "input volume")) == 10 * 1024


async def test_a_declared_size_that_would_eat_into_the_reserve_is_refused_up_front(disk: Disk) -> None:
    disk.free = GiB + 8 * 1024
    body = Body(9)
    with pytest.raises(InsufficientStorage) as caught:
        await take(limited_upload(aiter(body), 9 * 1024, limits(), "input volume"))
    assert str(caught.value).startswith(
        "not enough disk space for input volume: the server keeps 1 GiB free (DISK_RESERVE_BYTES)"
    )
    assert body.taken == 0
    # What fits above the reserve goes through.
    assert await take(limited_upload(aiter(Body(8)), 8 * 1024, limits(), "input volume")) == 8 * 1024


async def test_a_chunked_body_is_refused_when_the_disk_fills_while_it_arrives(
    disk: Disk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quotas, "DISK_CHECK_BYTES", 4 * 1024)
    disk.free = 2 * GiB
    body = Body(100)
    received = 0

    async def run() -> None:
        nonlocal received
        async for chunk in limited_upload(aiter(body), None, limits(max_bytes=GiB), "input volume"):
            received += len(chunk)
            if received == 6 * 1024:
                disk.free = GiB + 1024  # another upload took the space meanwhile

    with pytest.raises(InsufficientStorage):
        await run()
    assert received == 7 * 1024  # refused at the next check (at 8 KiB, before that chunk is passed on)
    assert disk.asked == 3  # up front, at 4 KiB, at 8 KiB


async def test_a_refused_upload_leaves_no_partial_and_keeps_the_earlier_file(tmp_path: Path, disk: Disk) -> None:
    dest = tmp_path / "volume.nii"
    dest.write_bytes(b"the earlier upload")
    with pytest.raises(TooLarge):
        await receive_file(
            limited_upload(aiter(Body(20)), None, limits(), "input volume"),
            dest,
            label="input volume",
            expected_ext=".nii",
            check_types=False,
            convert=False,
        )
    assert dest.read_bytes() == b"the earlier upload"
    assert [p.name for p in tmp_path.iterdir()] == ["volume.nii"]  # noqa: ASYNC240  # O(1) local syscall


def test_the_live_session_limit() -> None:
    check_room(1, limit=2)
    with pytest.raises(AtCapacity) as caught:
        check_room(2, limit=2)
    assert "limit of 2 live sessions (MAX_SESSIONS)" in str(caught.value)


class Trickle:
    """A body that sends `size` bytes every `every` seconds, `chunks` times."""

    def __init__(self, chunks: int, size: int, every: float) -> None:
        self.chunks, self.size, self.every = chunks, size, every

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            await asyncio.sleep(self.every)
            yield b"x" * self.size


async def test_an_upload_that_stops_is_stalled_after_the_idle_timeout(disk: Disk) -> None:
    started = time.monotonic()
    with pytest.raises(Stalled) as caught:
        await take(limited_upload(aiter(Trickle(3, 1024, 10)), None, limits(max_bytes=GiB, idle=0.3), "input volume"))
    assert 0.25 < time.monotonic() - started < 1
    assert str(caught.value) == (
        "input volume: the upload sent less than 16 KiB in 0.3 s (UPLOAD_IDLE_TIMEOUT); "
        "it was dropped and the input can be uploaded again"
    )


async def test_an_upload_that_trickles_is_stalled_though_bytes_keep_coming(disk: Disk) -> None:
    taken = 0
    with pytest.raises(Stalled):
        async for chunk in limited_upload(aiter(Trickle(100, 1, 0.05)), None, limits(max_bytes=GiB, idle=0.3), "x"):
            taken += len(chunk)
    assert 3 <= taken <= 7  # about 0.3 s of one byte per 0.05 s


async def test_an_upload_bringing_16_kib_per_timeout_goes_on(disk: Disk) -> None:
    body = Trickle(8, quotas.PROGRESS_BYTES, 0.2)  # 1.6 s in all, but 16 KiB every 0.2 s of a 0.3 s allowance
    taken = await take(limited_upload(aiter(body), None, limits(max_bytes=GiB, idle=0.3), "x"))
    assert taken == 8 * quotas.PROGRESS_BYTES


async def test_time_the_receiver_spends_is_not_held_against_the_client(disk: Disk) -> None:
    taken = 0
    async for chunk in limited_upload(aiter(Body(5)), None, limits(max_bytes=GiB, idle=0.2), "x"):
        taken += len(chunk)
        await asyncio.sleep(0.3)  # a slow disk
    assert taken == 5 * 1024


class DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Wrapped(Exception):
    """What SQLAlchemy raises: the driver's error as `orig`."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(str(orig))
        self.orig = orig


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        Wrapped(DriverError("database or disk is full")),
        Wrapped(DriverError("could not extend file", "53100")),
    ],
    ids=["ENOSPC", "EDQUOT", "sqlite", "postgresql"],
)
def test_a_full_disk_is_507_naming_the_reserve(error: BaseException) -> None:
    with pytest.raises(InsufficientStorage) as caught, quotas.out_of_space_is_507("input volume"):
        raise error
    assert str(caught.value).startswith("not enough disk space for input volume: the disk is full (DISK_RESERVE_BYTES")
    assert caught.value.__cause__ is error


@pytest.mark.parametrize("error", [OSError(errno.EACCES, "Permission denied"), Wrapped(DriverError("locked", "55P03"))])
def test_other_errors_pass_unchanged(error: BaseException) -> None:
    with pytest.raises(type(error)), quotas.out_of_space_is_507("input volume"):
        raise error
