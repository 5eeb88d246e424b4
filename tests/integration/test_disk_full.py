"""A small real disk (tmpfs) as SESSION_PATH: once its free space is under DISK_RESERVE_BYTES the server says it
is not ready and refuses writes with 507 naming the setting; metadata cannot fill it, and neither concurrent
uploads nor a full database ever make a 500."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import ServerFactory, fill, free, write_nifti

MiB = 1 << 20
OCTET = {"Content-Type": "application/octet-stream"}
RECORD = {"inputs": {"mask": {"enabled": True}}, "params": {}, "outputs": {}}  # waits for two inputs: no run starts
RESERVE_NAMED = "(DISK_RESERVE_BYTES)"


def details(response: httpx.Response) -> str:
    return " | ".join(e["detail"] for e in response.json()["errors"])


def assert_507(response: httpx.Response) -> str:
    assert response.status_code == 507, response.text
    detail = details(response)
    assert "DISK_RESERVE_BYTES" in detail, detail
    return detail


def test_a_disk_under_its_reserve_is_not_ready_and_refuses_writes_with_507(
    small_disk: Callable[[int], Path], make_server: ServerFactory, tmp_path: Path
) -> None:
    disk = small_disk(64)
    server = make_server(session_path=disk / "sessions", DISK_RESERVE_BYTES="16MiB")
    volume = write_nifti(tmp_path / "v.nii", 0.1).read_bytes()
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
        waiting = client.post("/models/record", json=RECORD).json()["data"]["session_id"]
        filler = fill(disk, leave=8 * MiB)

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert (
            f"disk space: SESSION_PATH {disk / 'sessions'} has 8.0 MiB free, less than DISK_RESERVE_BYTES "
            "(16 MiB); new sessions and uploads are refused with 507"
        ) in details(ready).split(" | ")
        created = client.post("/models/record", json=RECORD)
        assert assert_507(created) == (
            "not enough disk space for a new session: the server keeps 16 MiB free "
            "(DISK_RESERVE_BYTES) and has 8.0 MiB free"
        )
        upload = client.put(f"/sessions/{waiting}/inputs/volume", content=volume, headers=OCTET)
        assert assert_507(upload).startswith("not enough disk space for input volume: the server keeps 16 MiB free")
        assert list((disk / "sessions" / waiting / "inputs").iterdir()) == []
        # Cancelling takes no space worth refusing it for (and stops what may be filling the disk).
        cancelled = client.delete(f"/sessions/{waiting}")
        assert cancelled.status_code == 200 and cancelled.json()["data"]["info"] == "cancelled"

        filler.unlink()
        assert client.get("/readyz").status_code == 200
        assert client.post("/models/record", json=RECORD).status_code == 200
    assert "Traceback" not in server.output()


def test_creating_and_deleting_sessions_cannot_fill_the_disk(
    small_disk: Callable[[int], Path], make_server: ServerFactory
) -> None:
    """The attack: create a session with a big string parameter, delete it, again and again. The reserve stops
    it; the database keeps room to work, and /readyz says why the server is not ready."""
    disk = small_disk(24)
    server = make_server(session_path=disk / "sessions", DISK_RESERVE_BYTES="12MiB", MAX_SESSIONS="10000")
    body = {"inputs": {}, "params": {"label": {"value": "x" * 50_000}}, "outputs": {}}
    answers: list[int] = []
    with server.client() as client:
        for _ in range(1000):
            created = client.post("/models/record", json=body)
            answers.append(created.status_code)
            if created.status_code != 200:
                break
            deleted = client.delete(f"/sessions/{created.json()['data']['session_id']}")
            assert deleted.status_code == 200, deleted.text
        assert answers[-1] == 507 and set(answers[:-1]) == {200}, answers
        assert_507(created)
        assert free(disk) >= 10 * MiB  # the reserve (less one round's overshoot) is still there
        # A new session is refused while the reserve plus its own size does not fit, so the attack may stop with a
        # few KiB above the reserve: /readyz is not ready exactly when the disk is under the reserve itself.
        ready = client.get("/readyz")
        under = free(disk) < 12 * MiB
        assert ready.status_code == (503 if under else 200), ready.text
        if under:
            assert "less than DISK_RESERVE_BYTES" in ready.text
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("reserve", ["16MiB", "0"], ids=["reserve-checks", "disk-full"])
def test_six_concurrent_chunked_uploads_near_the_reserve_are_200_or_507_never_500(
    small_disk: Callable[[int], Path], make_server: ServerFactory, tmp_path: Path, reserve: str
) -> None:
    """With a reserve, its checks refuse what does not fit; with none, the disk itself fills mid-write: still 507."""
    disk = small_disk(100)  # more than a whole check interval above the reserve: every upload starts
    server = make_server(session_path=disk / "sessions", DISK_RESERVE_BYTES=reserve)
    volumes = [write_nifti(tmp_path / f"v{i}.nii", 20, seed=i).read_bytes() for i in range(6)]  # 120 MB for 100 MiB
    with server.client() as client:
        sessions = [client.post("/models/record", json=RECORD).json()["data"]["session_id"] for _ in volumes]

    def upload(pair: tuple[str, bytes]) -> httpx.Response:
        session_id, volume = pair

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server cannot refuse it up front
            for start in range(0, len(volume), 256 << 10):
                yield volume[start : start + (256 << 10)]

        with server.client() as client:
            return client.put(f"/sessions/{session_id}/inputs/volume", content=chunks(), headers=OCTET)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(upload, zip(sessions, volumes, strict=True)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 507} and 507 in statuses, statuses
    for answer in answers:
        if answer.status_code == 507:
            assert_507(answer)
    for session_id, answer in zip(sessions, answers, strict=True):
        kept = sorted(p.name for p in (disk / "sessions" / session_id / "inputs").iterdir())
        assert kept == (["volume.nii"] if answer.status_code == 200 else []), (answer.status_code, kept)
    assert "Traceback" not in server.output()


def test_a_full_database_disk_is_507_not_500(small_disk: Callable[[int], Path], make_server: ServerFactory) -> None:
    """No reserve and a disk left with two pages: SQLite itself runs out of space ("database or disk is full")."""
    disk = small_disk(16)
    server = make_server(session_path=disk / "sessions", DISK_RESERVE_BYTES="0", MAX_SESSIONS="10000")
    with server.client() as client:
        assert client.post("/models/record", json=RECORD).status_code == 200
        fill(disk, leave=8192)
        answers = [client.post("/models/record", json=RECORD) for _ in range(50)]
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 507} and 507 in statuses, statuses
    found = {assert_507(a) for a in answers if a.status_code == 507}
    assert (
        "not enough disk space for the session database to record the change: the disk is full "
        "(DISK_RESERVE_BYTES is the free space the server keeps on SESSION_PATH's disk; the operator must "
        "free space)"
    ) in found, found
    assert "Traceback" not in server.output()
