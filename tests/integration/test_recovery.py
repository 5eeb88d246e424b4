"""A server killed (SIGKILL) or stopped at each point of a run comes back and finishes every session right."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from .conftest import (
    SESSION_LABEL,
    Server,
    containers_removed,
    create_and_upload,
    kill_server,
    read_log,
    stop_server,
    write_nifti,
)


def container_of(session_id: str) -> list[str]:
    result = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={SESSION_LABEL}={session_id}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def running(server: Server, session_id: str) -> bool:
    with server.client() as client:
        return client.get(f"/sessions/{session_id}").json()["data"]["info"] == "running"


def output_of(server: Server, session_id: str) -> bytes:
    with server.client() as client:
        response = client.get(f"/sessions/{session_id}/outputs/output_vol")
        assert response.status_code == 200, response.text
        return response.content


def log_lines(server: Server, session_id: str) -> list[bytes]:
    return [line for _, line in read_log(server, session_id)]


def sleeping_run(make_server, tmp_path: Path, seconds: int, **settings: str) -> tuple[Server, str, bytes]:
    """A server with one `sleep` run in progress: (server, session id, the input's bytes)."""
    server = make_server(**settings)
    source = write_nifti(tmp_path / "in.nii.gz", 1)
    with server.client() as client:
        session_id = create_and_upload(client, "sleep", source, seconds=seconds)
    wait_until(lambda: running(server, session_id), what="the run to start")
    return server, session_id, source.read_bytes()


def assert_complete(server: Server, session_id: str, expected: bytes) -> None:
    assert server.wait_status(session_id, {"complete", "failed"}, timeout=120)["status"] == "complete"
    assert output_of(server, session_id) == expected


def test_kill_during_upload_leaves_the_session_waiting_and_nothing_partial(make_server, tmp_path: Path) -> None:
    server = make_server()
    source = write_nifti(tmp_path / "in.nii.gz", 2)
    with server.client() as client:
        session_id = client.post("/models/copy", json={}).json()["data"]["session_id"]
    url = urlparse(server.url)
    body = source.read_bytes()
    with socket.create_connection((url.hostname, url.port)) as raw:
        raw.sendall(
            f"PUT /sessions/{session_id}/inputs/input_vol HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body) * 4}\r\n\r\n".encode()
        )
        raw.sendall(body)
        inputs = server.session_path / session_id / "inputs"
        wait_until(lambda: any(inputs.iterdir()), what="the partial upload file")
        kill_server(server)
    server = make_server.restart(server)
    wait_until(lambda: not any(inputs.iterdir()), timeout=10, what="the dead upload's partial file to go")
    with server.client() as client:
        status = client.get(f"/sessions/{session_id}").json()["data"]
        assert status["status"] == "waiting" and status["needed"] == ["input_vol"]
        # The dead upload's claim is gone: uploading again is not a 409.
        answer = client.put(
            f"/sessions/{session_id}/inputs/input_vol",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert answer.status_code == 200, answer.text
    assert_complete(server, session_id, body)


def test_kill_with_one_run_working_and_one_queued(make_server, tmp_path: Path) -> None:
    server = make_server(WORKER_THREADS="1")
    source = write_nifti(tmp_path / "in.nii.gz", 1)
    with server.client() as client:
        first = create_and_upload(client, "sleep", source, seconds=4)
        second = create_and_upload(client, "sleep", source, seconds=0)
    wait_until(lambda: running(server, first), what="the first run to start")
    kill_server(server)
    assert len(container_of(first)) == 1  # the model kept running while the server was dead

    server = make_server.restart(server)
    with server.client() as client:
        assert client.get(f"/sessions/{second}").json()["data"]["status"] == "ready"
    lines = log_lines(server, first)
    assert lines.count(b"sleeping 4") == 1 and b"done" in lines, lines  # re-attached, nothing repeated
    for session_id in (first, second):
        assert_complete(server, session_id, source.read_bytes())
    assert containers_removed(lambda: container_of(first) + container_of(second)) == []


def test_container_that_finished_while_the_server_was_dead_is_collected(make_server, tmp_path: Path) -> None:
    server, session_id, expected = sleeping_run(make_server, tmp_path, 1)
    kill_server(server)
    [container] = container_of(session_id)
    wait_until(
        lambda: (
            subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Running}}", container], capture_output=True, text=True
            ).stdout.strip()
            == "false"
        ),
        what="the model to exit",
    )
    server = make_server.restart(server)
    assert_complete(server, session_id, expected)
    assert b"done" in log_lines(server, session_id)


def test_run_whose_container_vanished_is_queued_again(make_server, tmp_path: Path) -> None:
    server, session_id, expected = sleeping_run(make_server, tmp_path, 3)
    kill_server(server)
    subprocess.run(["docker", "rm", "-f", *container_of(session_id)], check=True, capture_output=True)
    server = make_server.restart(server)
    assert_complete(server, session_id, expected)
    assert log_lines(server, session_id).count(b"sleeping 3") == 2  # the first attempt's log is kept


def test_kill_while_collecting_the_output(make_server, tmp_path: Path) -> None:
    server = make_server()
    source = tmp_path / "big.nii.gz"
    write_nifti(tmp_path / "head.nii.gz", 0.01)
    with source.open("wb") as out:  # a real .nii.gz head, then 400 MB: collecting takes a while
        out.write((tmp_path / "head.nii.gz").read_bytes())
        block = bytes(range(256)) * 4096
        for _ in range(400):
            out.write(block)
    with server.client() as client:
        session_id = create_and_upload(client, "copy", source)
    outputs = server.session_path / session_id / "outputs"
    wait_until(
        lambda: any(p.name.endswith(".partial") for p in outputs.iterdir()),
        timeout=120,
        what="output collection to begin",
    )
    kill_server(server)
    server = make_server.restart(server)
    assert server.wait_status(session_id, {"complete", "failed"}, timeout=120)["status"] == "complete"
    with server.client() as client, client.stream("GET", f"/sessions/{session_id}/outputs/output_vol") as response:
        received = b"".join(response.iter_bytes())
    assert received == source.read_bytes()
    assert not any(p.name.endswith(".partial") for p in outputs.iterdir())


def test_graceful_stop_leaves_the_run_going_and_the_next_start_follows_it(make_server, tmp_path: Path) -> None:
    server, session_id, expected = sleeping_run(make_server, tmp_path, 3)
    stop_server(server)
    assert len(container_of(session_id)) == 1
    server = make_server.restart(server)
    assert_complete(server, session_id, expected)
    assert log_lines(server, session_id).count(b"sleeping 3") == 1
    assert containers_removed(lambda: container_of(session_id)) == []


def test_orphan_containers_of_this_server_are_removed_at_start(make_server, tmp_path: Path) -> None:
    server = make_server()
    instance = (server.session_path / ".instance").read_text().strip()
    stop_server(server)
    orphan = subprocess.run(
        [
            "docker",
            "create",
            "--label",
            f"org.inferserver.instance={instance}",
            "--label",
            f"{SESSION_LABEL}=00000000-0000-4000-8000-000000000000",
            "inferserver-test/sleep:1",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    other = subprocess.run(  # another server's container on the same engine: not ours to touch
        ["docker", "create", "--label", "org.inferserver.instance=someone-else", "inferserver-test/sleep:1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        make_server.restart(server)
        wait_until(
            lambda: subprocess.run(["docker", "inspect", orphan], capture_output=True).returncode != 0,
            timeout=10,
            what="the orphan to be removed",
        )
        assert subprocess.run(["docker", "inspect", other], capture_output=True).returncode == 0
    finally:
        subprocess.run(["docker", "rm", "-f", orphan, other], capture_output=True)
