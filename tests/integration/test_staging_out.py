"""No cancel, full disk, output limit or stop while an output is staged out of its container can stall the queue.

A security report: `DELETE /sessions/{sid}` while a large output was being copied out left the engine's archive
stream open; dockerd then held the container, its removal hung, the run's slot was never freed (the next session
stayed queued for over 60 s) and SIGTERM hung for minutes. A full SESSION_PATH read "Docker engine unreachable".
Each case here uses the `bigout` model, which writes N MiB of zeros as its output.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import (
    Server,
    ServerFactory,
    containers_removed,
    create_and_upload,
    write_nifti,
)
from .test_recovery import container_of, output_of, wait_until

MiB = 1 << 20
PARTIAL = ".output_vol.nii.gz.partial"


def partial_of(server: Server, session_id: str) -> Path:
    return server.session_path / session_id / "outputs" / PARTIAL


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def wait_staging_out(server: Server, session_id: str) -> int:
    """Wait until the output is being copied out: its partial file exists and grows. Its size then."""
    partial = partial_of(server, session_id)
    wait_until(lambda: size_of(partial) > 0, timeout=60, what=f"{partial} to appear")
    first = size_of(partial)
    wait_until(lambda: size_of(partial) > first, timeout=10, what=f"{partial} to grow")
    return size_of(partial)


def outputs_left(server: Server, session_id: str) -> list[str]:
    return sorted(p.name for p in (server.session_path / session_id / "outputs").iterdir())


def bigout(server: Server, source: Path, mib: int) -> str:
    with server.client() as client:
        return create_and_upload(client, "bigout", source, mib=mib)


def next_session_starts(server: Server, session_id: str, since: float, timeout: float = 30) -> float:
    """Seconds from `since` until `session_id` is working or complete."""
    data = server.wait_status(session_id, {"working", "complete", "failed"}, timeout=timeout)
    assert data["status"] in {"working", "complete"}, data
    return time.monotonic() - since


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "in.nii.gz", 0.1)


def test_cancel_while_an_output_is_staged_out_frees_the_slot_at_once(make_server: ServerFactory, source: Path) -> None:
    server = make_server(WORKER_THREADS="1")
    session_id = bigout(server, source, 2048)
    with server.client() as client:
        queued = create_and_upload(client, "copy", source)
        staged = wait_staging_out(server, session_id)
        assert staged < 2048 * MiB  # cancelled in the middle of the copy, not after it

        started = time.monotonic()
        answer = client.delete(f"/sessions/{session_id}")
        answered = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == {"status": "failed", "needed": [], "info": "cancelled"}
    assert answered < 5
    assert containers_removed(lambda: container_of(session_id), timeout=5) == []
    took = next_session_starts(server, queued, started)
    assert took < 5, f"the next session started {took:.1f} s after the cancel"
    assert server.wait_status(queued, {"complete", "failed"})["status"] == "complete"
    assert outputs_left(server, session_id) == []  # no partial output
    print(f"cancel during staging out -> next session working: {took:.2f} s")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 MiB tmpfs for SESSION_PATH."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(path: Path) -> int:
    """Write zeros to `path` until its disk is full; the bytes written."""
    block = bytes(MiB)
    written = 0
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(block)
        except OSError as exc:
            assert exc.errno == 28, exc
    return written


def test_a_disk_filling_during_staging_out_fails_the_run_naming_session_path(
    make_server: ServerFactory, source: Path, small_disk: Path
) -> None:
    sessions = small_disk / "sessions"
    server = make_server(WORKER_THREADS="1", DISK_RESERVE_BYTES="0", session_path=sessions)
    session_id = bigout(server, source, 500)  # fits the empty disk: the check before writing lets it go
    with server.client() as client:
        queued = create_and_upload(client, "copy", source)
    filler = small_disk / "filler"
    wait_until(lambda: size_of(partial_of(server, session_id)) >= 0, timeout=60, what="the output's partial file")
    fill(filler)  # another writer takes the rest of the disk while the output is copied

    data = server.wait_status(session_id, {"complete", "failed"}, timeout=30)
    assert data["status"] == "failed"
    assert data["info"] == f"no space left on SESSION_PATH ({sessions}) while writing output output_vol"
    assert outputs_left(server, session_id) == []
    assert containers_removed(lambda: container_of(session_id), timeout=5) == []
    filler.unlink()  # room again: the next session runs
    assert server.wait_status(queued, {"complete", "failed"}, timeout=30)["status"] == "complete"
    assert output_of(server, queued) == source.read_bytes()


def test_an_output_over_max_output_bytes_fails_naming_the_limit(make_server: ServerFactory, source: Path) -> None:
    server = make_server(MAX_OUTPUT_BYTES="64MiB")
    with server.client() as client:
        over = create_and_upload(client, "bigout", source, mib=65)
        within = create_and_upload(client, "bigout", source, mib=64)
    data = server.wait_status(over, {"complete", "failed"})
    assert data == {
        "status": "failed",
        "needed": [],
        "info": "output output_vol is 65 MiB, over the limit of 64 MiB (MAX_OUTPUT_BYTES)",
    }
    assert outputs_left(server, over) == []
    assert server.wait_status(within, {"complete", "failed"})["status"] == "complete"
    assert len(output_of(server, within)) == 64 * MiB


def test_an_output_eating_into_the_disk_reserve_fails_naming_it(
    make_server: ServerFactory, source: Path, small_disk: Path
) -> None:
    sessions = small_disk / "sessions"
    # 600 MiB disk, 400 MiB kept free: a 300 MiB output would leave less.
    server = make_server(DISK_RESERVE_BYTES="400MiB", session_path=sessions)
    session_id = bigout(server, source, 300)
    data = server.wait_status(session_id, {"complete", "failed"})
    assert data["status"] == "failed"
    assert re.fullmatch(
        re.escape(
            f"not enough disk space for output output_vol (300 MiB): SESSION_PATH ({sessions}) "
            "keeps 400 MiB free (DISK_RESERVE_BYTES) and has "
        )
        + r"\d+\.\d MiB free",
        data["info"],
    ), data
    assert outputs_left(server, session_id) == []


def test_a_stop_while_an_output_is_staged_out_is_quick_and_the_restart_finishes_the_run(
    make_server: ServerFactory, source: Path
) -> None:
    server = make_server(WORKER_THREADS="1")
    session_id = bigout(server, source, 2048)
    wait_staging_out(server, session_id)

    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=15)
    stopped = time.monotonic() - started
    assert stopped < 8, f"the server took {stopped:.1f} s to stop"  # uvicorn's graceful timeout is 5 s
    # uvicorn re-raises the signal once its shutdown is done: the exit status says how it ended.
    assert server.process.returncode == -signal.SIGTERM, server.output()
    assert "Application shutdown complete" in server.output()
    assert outputs_left(server, session_id) == []  # the partial output went with the stop

    again = make_server.restart(server)
    data = again.wait_status(session_id, {"complete", "failed"}, timeout=120)
    assert data["status"] == "complete", data  # re-attached to the exited container and staged out anew
    assert outputs_left(again, session_id) == ["output_vol.nii.gz"]
    assert (again.session_path / session_id / "outputs" / "output_vol.nii.gz").stat().st_size == 2048 * MiB
    assert containers_removed(lambda: container_of(session_id), timeout=5) == []
    print(f"SIGTERM during staging out -> exit: {stopped:.2f} s")


def test_a_stop_just_after_a_cancel_during_staging_out_is_quick_and_leaves_no_container(
    make_server: ServerFactory, source: Path
) -> None:
    server = make_server(WORKER_THREADS="1")
    session_id = bigout(server, source, 2048)
    wait_staging_out(server, session_id)
    with server.client() as client:
        assert client.delete(f"/sessions/{session_id}").status_code == 200

    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)
    stopped = time.monotonic() - started
    assert stopped < 8, f"the server took {stopped:.1f} s to stop"
    assert "Application shutdown complete" in server.output()
    assert container_of(session_id) == []
    assert outputs_left(server, session_id) == []

    again = make_server.restart(server)
    assert again.wait_status(session_id, {"complete", "failed"}) == {
        "status": "failed",
        "needed": [],
        "info": "cancelled",
    }
