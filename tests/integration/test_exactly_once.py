"""Acknowledgements a client can trust, under concurrency, on SQLite and PostgreSQL: MAX_SESSIONS holds, of
concurrent uploads to one input exactly one is answered 200 and that one is what the run uses, and an upload
that completes after its session was cancelled is refused and stored nowhere."""

from __future__ import annotations

import hashlib
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from . import rawhttp
from .conftest import ServerFactory, serve_command, write_nifti

OCTET = {"Content-Type": "application/octet-stream"}
EMPTY = {"inputs": {}, "params": {}, "outputs": {}}


def session_dirs(session_path: Path) -> list[Path]:
    def is_uuid(name: str) -> bool:
        try:
            return str(uuid.UUID(name)) == name
        except ValueError:
            return False

    return [p for p in session_path.iterdir() if p.is_dir() and is_uuid(p.name)]


@pytest.mark.parametrize("workers", [1, 2])
def test_max_sessions_holds_under_100_concurrent_creates(
    make_server: ServerFactory, database: dict[str, str], workers: int
) -> None:
    server = make_server(command=serve_command(workers), MAX_SESSIONS="20", **database)

    def create(_: int) -> httpx.Response:
        with server.client() as client:
            return client.post("/models/copy", json=EMPTY)

    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(create, range(100)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 20 and statuses.count(503) == 80, statuses
    for refused in (a for a in answers if a.status_code == 503):
        assert refused.json() == {
            "errors": [
                {
                    "detail": "the server holds its limit of 20 live sessions "
                    "(MAX_SESSIONS); try again once some have finished"
                }
            ]
        }
    created = {a.json()["data"]["session_id"] for a in answers if a.status_code == 200}
    with server.client() as client:
        assert all(client.get(f"/sessions/{sid}").status_code == 200 for sid in created)
        metrics = client.get("/metrics").text
    assert 'inferserver_sessions{status="waiting"} 20.0' in metrics, metrics
    assert {p.name for p in session_dirs(server.session_path)} == created  # a refused create leaves no directory


def test_of_30_concurrent_uploads_to_one_input_exactly_one_is_taken_and_run(
    make_server: ServerFactory, database: dict[str, str], tmp_path: Path
) -> None:
    server = make_server(**database)
    volumes = [write_nifti(tmp_path / f"v{i}.nii.gz", 0.3, seed=i).read_bytes() for i in range(30)]
    with server.client() as client:
        session_id = client.post("/models/copy", json=EMPTY).json()["data"]["session_id"]

    def upload(volume: bytes) -> httpx.Response:
        with server.client() as client:
            return client.put(f"/sessions/{session_id}/inputs/input_vol", content=volume, headers=OCTET)

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(upload, volumes))
    taken = [(volume, a) for volume, a in zip(volumes, answers, strict=True) if a.status_code == 200]
    assert len(taken) == 1, [a.status_code for a in answers]
    volume, ack = taken[0]
    assert ack.json()["data"]["sha256"] == hashlib.sha256(volume).hexdigest()
    for refused in (a for a in answers if a.status_code != 200):
        # 409 while it raced with the taken one; 400 when it began after the session was queued
        assert refused.status_code in (400, 409), refused.text
        assert refused.json()["errors"][0]["detail"] in (
            "input input_vol is already being uploaded",
            "session is ready: it takes no more inputs",
            "session is working: it takes no more inputs",
            "session is complete: it takes no more inputs",
            "input input_vol was not stored: the session no longer waits for inputs (it is ready)",
            "input input_vol was not stored: the session no longer waits for inputs (it is working)",
            "input input_vol was not stored: the session no longer waits for inputs (it is complete)",
        ), refused.text
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    with server.client() as client:
        output = client.get(f"/sessions/{session_id}/outputs/output_vol")
    assert output.status_code == 200 and output.content == volume  # the copy model ran on the acknowledged file
    assert [p.name for p in (server.session_path / session_id / "inputs").iterdir()] == ["input_vol.nii.gz"]


def test_an_upload_that_completes_after_delete_is_409_and_stored_nowhere(
    make_server: ServerFactory, database: dict[str, str], tmp_path: Path
) -> None:
    server = make_server(**database)
    volume = write_nifti(tmp_path / "v.nii.gz", 1.0).read_bytes()
    with server.client() as client:
        session_id = client.post("/models/copy", json=EMPTY).json()["data"]["session_id"]
    inputs = server.session_path / session_id / "inputs"
    with rawhttp.connect(server.url) as sock:
        sock.sendall(
            f"PUT /sessions/{session_id}/inputs/input_vol HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(volume)}\r\n\r\n".encode()
        )
        sock.sendall(volume[: len(volume) // 2])
        deadline = time.monotonic() + 10
        while not any(inputs.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(inputs.iterdir()), "the upload never started writing"
        with server.client() as client:
            cancelled = client.delete(f"/sessions/{session_id}")
        assert cancelled.status_code == 200 and cancelled.json()["data"]["info"] == "cancelled"
        sock.sendall(volume[len(volume) // 2 :])
        reply = rawhttp.read_response(sock)
    assert reply.status == 409
    assert reply.detail() == "input input_vol was not stored: the session no longer waits for inputs (it is failed)"
    assert list(inputs.iterdir()) == []
    with server.client() as client:
        status = client.get(f"/sessions/{session_id}").json()["data"]
    assert status == {"status": "failed", "needed": ["input_vol"], "info": "cancelled"}
