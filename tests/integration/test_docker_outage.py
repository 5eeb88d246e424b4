"""Docker engine outages, on a private dockerd that is stopped and started again on the same data root:
the API stays up while the engine is down, queued runs wait for it and start when it returns, and a run
whose engine stops under it ends `failed` naming the engine — never stuck `working`, no container left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, containers_removed, create_and_upload, stop_server, write_nifti
from .gpu_engine import (
    Engine,
    leftover_containers,
    restart_engine,
    start_engine_or_fail,
    start_server_on,
    stop_daemon,
    stop_engine,
)

SLEEP_IMAGE = "inferserver-test/sleep:1"


@pytest.fixture(scope="module")
def engine(fixture_images: None) -> Iterator[Engine]:
    """One private engine for the module: each test leaves it running."""
    engine = start_engine_or_fail([SLEEP_IMAGE], "the private dockerd")
    yield engine
    stop_engine(engine)


@pytest.fixture
def server(engine: Engine, tmp_path: Path) -> Iterator[Server]:
    server = start_server_on(engine.host, tmp_path / "server", GPUS="none", WORKER_THREADS="1")
    yield server
    stop_server(server)


def test_queued_runs_wait_for_the_engine_and_start_when_it_returns(
    engine: Engine, server: Server, tmp_path: Path
) -> None:
    sources = [write_nifti(tmp_path / f"in{i}.nii.gz", 0.05, seed=i) for i in range(2)]
    stop_daemon(engine)
    with server.client() as client:
        assert client.get("/").status_code == 200
        sessions = [create_and_upload(client, "sleep", source, seconds=0) for source in sources]
        time.sleep(3)  # several dispatcher ticks with no engine
        for position, session_id in enumerate(sessions, 1):
            status = client.get(f"/sessions/{session_id}").json()["data"]
            assert status["status"] == "ready", status
            assert status["info"].startswith(f"queued at position {position}; waiting for the Docker engine"), status

        restart_engine(engine)
        back = time.monotonic()
        while (status := client.get(f"/sessions/{sessions[0]}").json()["data"])["status"] == "ready":
            assert time.monotonic() - back < 30, f"the queued run did not start within 30 s: {status}"
            time.sleep(0.02)
        started_after = time.monotonic() - back
        for session_id, source in zip(sessions, sources, strict=True):
            assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete", server.output()
            assert client.get(f"/sessions/{session_id}/outputs/output_vol").content == source.read_bytes()
    assert containers_removed(lambda: leftover_containers(engine)) == []
    print(f"the queued run started {started_after:.2f} s after the engine answered again")


def test_a_run_whose_engine_stops_fails_naming_the_engine(engine: Engine, server: Server, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.05)
    with server.client() as client:
        session_id = create_and_upload(client, "sleep", source, seconds=60)
        assert server.wait_status(session_id, {"working"})["status"] == "working"
        deadline = time.monotonic() + 30
        while client.get(f"/sessions/{session_id}").json()["data"]["info"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)

        stop_daemon(engine)
        status = server.wait_status(session_id, {"complete", "failed"}, timeout=60)
        assert status["status"] == "failed", (status, server.output())
        assert "Docker engine" in status["info"], status
        log = client.get(f"/sessions/{session_id}/logs").text
        assert "sleeping 60" in log and f"run failed: {status['info']}" in log

        # The engine comes back with the stopped container in its data root: the server removes it, and runs again.
        restart_engine(engine)
        again = create_and_upload(client, "sleep", source, seconds=0)
        assert server.wait_status(again, {"complete", "failed"})["status"] == "complete", server.output()
        deadline = time.monotonic() + 30
        while leftover_containers(engine):
            assert time.monotonic() < deadline, f"containers left behind: {leftover_containers(engine)}"
            time.sleep(0.2)
