"""DELETE /sessions/{sid} cancels at every stage; clean-up follows the old server's CLEANUP_* settings."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .conftest import Server, containers_removed, create_and_upload, read_log, write_nifti
from .test_recovery import container_of, running, wait_until

OCTET = {"Content-Type": "application/octet-stream"}


def status_of(server: Server, session_id: str) -> httpx.Response:
    with server.client() as client:
        return client.get(f"/sessions/{session_id}")


def test_cancel_waiting_queued_and_running_sessions(make_server, tmp_path: Path) -> None:
    server = make_server(WORKER_THREADS="1")
    source = write_nifti(tmp_path / "in.nii.gz", 0.5)
    with server.client() as client:
        waiting = client.post("/models/copy", json={}).json()["data"]["session_id"]
        working = create_and_upload(client, "sleep", source, seconds=60)
        queued = create_and_upload(client, "sleep", source, seconds=0)
        wait_until(lambda: running(server, working), what="the run to start")
        log_file = server.session_path / working / "log"
        wait_until(lambda: b"sleeping 60" in log_file.read_bytes(), what="the model's first line in the log")

        for session_id in (waiting, queued):
            answer = client.delete(f"/sessions/{session_id}")
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"]["status"] == "failed" and answer.json()["data"]["info"] == "cancelled"

        started = time.monotonic()
        answer = client.delete(f"/sessions/{working}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"] == {"status": "failed", "needed": [], "info": "cancelled"}
        assert time.monotonic() - started < 15  # stopped, not waited out
        assert container_of(working) == []
        log = b"\n".join(line for _, line in read_log(server, working))
        assert b"sleeping 60" in log and b"inferserver: run failed: cancelled" in log

        # Cancelled sessions take nothing more and answer the client's poll with `failed`.
        assert (
            client.put(f"/sessions/{waiting}/inputs/input_vol", content=source.read_bytes(), headers=OCTET).status_code
            == 400
        )
        again = client.delete(f"/sessions/{working}")
        assert again.status_code == 409 and "already failed" in again.json()["errors"][0]["detail"]


def finished_copy(server: Server, source: Path) -> str:
    """A complete session of the copy model."""
    with server.client() as client:
        session_id = create_and_upload(client, "copy", source)
    assert server.wait_status(session_id, {"complete"})["status"] == "complete"
    return session_id


def test_finished_sessions_are_cleaned_up_with_their_files(make_server, tmp_path: Path) -> None:
    server = make_server(CLEANUP_TIMER="1", CLEANUP_SECONDS="2", CLEANUP_FILES="true")
    session_id = finished_copy(server, write_nifti(tmp_path / "in.nii.gz", 0.1))
    wait_until(lambda: status_of(server, session_id).status_code == 404, timeout=15, what="the clean-up")
    assert not (server.session_path / session_id).exists()


def test_cleanup_keeps_files_by_default_and_spares_what_is_in_use(make_server, tmp_path: Path) -> None:
    server = make_server(CLEANUP_TIMER="1", CLEANUP_SECONDS="2", WORKER_THREADS="1")
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    done = finished_copy(server, source)
    with server.client() as client:
        long_run = create_and_upload(client, "sleep", source, seconds=6)
        uploading = client.post("/models/copy", json={}).json()["data"]["session_id"]

    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield source.read_bytes()[:4096]
        release.wait(30)
        yield source.read_bytes()[4096:]

    upload: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: upload.setdefault(
            "r", server.client().put(f"/sessions/{uploading}/inputs/input_vol", content=slow_body(), headers=OCTET)
        )
    )
    thread.start()
    try:
        wait_until(lambda: status_of(server, done).status_code == 404, timeout=15, what="the clean-up")
        assert (server.session_path / done).is_dir()  # CLEANUP_FILES is false by default
        time.sleep(2)  # several more clean-up rounds
        assert status_of(server, long_run).json()["data"]["status"] == "working"  # never under a run
        assert status_of(server, uploading).status_code == 200  # nor under an upload in progress
    finally:
        release.set()
        thread.join(30)
    assert upload["r"].status_code == 200
    for session_id in (long_run, uploading):
        assert server.wait_status(session_id, {"complete"})["status"] == "complete"


# Cancel moments: seconds after the session says `working`; None: as soon as the upload has landed. A fresh
# server's first start is the slowest (its engine connection is new), so each server starts with another moment.
CANCEL_DELAYS: list[float | None] = [None, 0.0, 0.01, 0.05, 0.1]


def cancel_at(server: Server, client: httpx.Client, source: Path, delay: float | None) -> str:
    """A 60 s sleep run, cancelled `delay` s after it says `working`; the session's id."""
    session_id = create_and_upload(client, "sleep", source, seconds=60)
    if delay is not None:
        deadline = time.monotonic() + 20
        while status_of(server, session_id).json()["data"]["status"] != "working":
            assert time.monotonic() < deadline, f"session {session_id} never started"
        time.sleep(delay)
    answer = client.delete(f"/sessions/{session_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["status"] == "failed" and answer.json()["data"]["info"] == "cancelled"
    return session_id


def test_cancel_at_any_moment_of_a_start_leaves_no_container(make_server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.1)
    left: dict[str, list[str]] = {}
    for first in CANCEL_DELAYS[:4]:
        server = make_server()
        with server.client() as client:
            for delay in [first, *CANCEL_DELAYS]:
                session_id = cancel_at(server, client, source, delay)
                # Removed within a few seconds, not at some later orphan sweep (or never).
                if remaining := containers_removed(functools.partial(container_of, session_id), timeout=4):
                    left[f"{session_id} (cancelled {delay} s after working)"] = remaining
    assert left == {}, f"containers left after a cancel: {left}"
