"""Limits on a real engine and over real HTTP: memory, run time, /dev/shm, privileges, network, uploads, sessions."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .conftest import Server, containers_removed, fill, leftover_containers, write_nifti, write_nrrd

OCTET = {"Content-Type": "application/octet-stream"}
MiB, GiB = 1 << 20, 1 << 30


def create(client: httpx.Client, model_id: str, **body: object) -> str:
    response = client.post(f"/models/{model_id}", json={"inputs": {}, "params": {}, "outputs": {}, **body})
    assert response.status_code == 200, response.text
    return response.json()["data"]["session_id"]


def detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return " | ".join(e["detail"] for e in response.json()["errors"])


def run_to_end(server: Server, model_id: str, timeout: float = 60, **params: object) -> tuple[str, dict]:
    with server.client() as client:
        session_id = create(client, model_id, params={k: {"value": v} for k, v in params.items()})
    return session_id, server.wait_status(session_id, {"complete", "failed"}, timeout)


def declared_only(server: Server, path: str, length: int) -> tuple[int, dict]:
    """PUT announcing `length` bytes but sending only the headers and 1 KiB: the answer must not wait for the rest."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"\0" * 1024)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _content_length(answer):
            data = sock.recv(65536)
            assert data, f"connection closed before a whole answer: {answer!r}"
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def _content_length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"answer without Content-Length: {answer!r}")


def inputs_on_disk(server: Server, session_id: str) -> dict[str, bytes]:
    """Every file in the session's inputs directory, partial uploads included."""
    directory = server.session_path / session_id / "inputs"
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """A body without Content-Length: httpx sends an iterator chunked."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


# -- runs ----------------------------------------------------------------------------------------


def test_a_model_over_its_memory_limit_fails_naming_the_limit(make_server) -> None:
    server = make_server()
    session_id, status = run_to_end(server, "hog", megabytes=64)  # the spec's inferserver.memory is 16MiB
    assert status["status"] == "failed"
    assert status["info"] == "exceeded the memory limit of 16 MiB"
    assert containers_removed(lambda: leftover_containers(server)) == []
    with server.client() as client:
        log = client.get(f"/sessions/{session_id}/logs").text
    assert "hog: taking 64 MiB" in log and "hog: holding" not in log
    # Under the limit the same model completes: it is the limit that killed it, not the fixture.
    small, status = run_to_end(server, "hog", megabytes=1)
    assert status["status"] == "complete", status
    with server.client() as client:
        assert client.get(f"/sessions/{small}/outputs/note").text == "held 1048576 bytes\n"


def test_a_model_over_its_time_is_stopped_and_fails(make_server, tmp_path: Path) -> None:
    server = make_server()
    source = write_nifti(tmp_path / "in.nii.gz", 0.01)
    with server.client() as client:
        session_id = create(client, "sleep_timeout", params={"seconds": {"value": 60}})  # the spec allows 2 s
        assert (
            client.put(
                f"/sessions/{session_id}/inputs/input_vol", content=source.read_bytes(), headers=OCTET
            ).status_code
            == 200
        )
    status = server.wait_status(session_id, {"complete", "failed"}, timeout=30)
    assert status["status"] == "failed"
    assert status["info"] == "timed out after 2 s"
    assert containers_removed(lambda: leftover_containers(server)) == []
    with server.client() as client:
        log = client.get(f"/sessions/{session_id}/logs").text
    assert "sleeping 60" in log and "inferserver: run failed: timed out after 2 s" in log


def test_the_container_gets_the_limits_no_capabilities_and_no_network(make_server) -> None:
    server = make_server(CONTAINER_SHM="256m", CONTAINER_MEMORY="512MiB", CONTAINER_PIDS="100", CONTAINER_CPUS="1.5")
    session_id, status = run_to_end(server, "sandbox")
    assert status["status"] == "complete", status
    with server.client() as client:
        text = client.get(f"/sessions/{session_id}/outputs/report").text
    report = dict(line.split(": ", 1) for line in text.splitlines())
    assert report["CapEff"] == "0000000000000000"  # every capability dropped
    assert report["NoNewPrivs"] == "1"
    assert report["net"].split() == ["lo"]  # CONTAINER_NETWORK=none: loopback only
    assert report["shm"].split(",") and "size=262144k" in report["shm"].split(",")  # 256 MiB
    assert report["pid1"] == "docker-init"  # Init: an init process reaps the model's children
    assert int(report["memory"]) == 512 * MiB
    assert report["memsw"] in (str(512 * MiB), "0")  # v1: memory+swap equals memory; v2: no swap
    assert report["pids"] == "100"
    assert report["cpu"].split()[0] == "150000"  # quota per 100 ms period (v2 "150000 100000", v1 "150000")


# -- uploads -------------------------------------------------------------------------------------


def test_an_upload_over_the_limit_is_413_with_or_without_content_length(make_server, tmp_path: Path) -> None:
    server = make_server(MAX_UPLOAD_BYTES="1m")
    with server.client() as client:
        session_id = create(client, "copy")
        path = f"/sessions/{session_id}/inputs/input_vol"

        # Content-Length: answered before the body is sent.
        status, body = declared_only(server, path, 2 * MiB)
        assert status == 413
        assert body["errors"][0]["detail"] == (
            "input input_vol is over the upload limit of 1 MiB (MAX_UPLOAD_BYTES): its Content-Length is 2097152 bytes"
        )
        # A client that sends it all anyway (as ablinfer does) reads the same answer.
        big = write_nifti(tmp_path / "big.nii.gz", 3).read_bytes()  # a real .nii.gz: the type check passes
        assert len(big) > 2 * MiB
        message = detail(client.put(path, content=big, headers=OCTET), 413)
        assert "over the upload limit of 1 MiB" in message

        # Chunked: refused once the bytes pass the limit.
        message = detail(client.put(path, content=chunks(big), headers=OCTET), 413)
        assert message == "input input_vol is over the upload limit of 1 MiB (MAX_UPLOAD_BYTES)"

        assert client.get(f"/sessions/{session_id}").json()["data"] == {
            "status": "waiting",
            "needed": ["input_vol"],
            "info": "",
        }
        assert inputs_on_disk(server, session_id) == {}  # no partial file left

        # Within the limit the upload lands and the run goes on.
        source = write_nifti(tmp_path / "in.nii.gz", 0.1)
        assert source.stat().st_size < MiB
        assert client.put(path, content=source.read_bytes(), headers=OCTET).status_code == 200
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_an_upload_eating_into_the_disk_reserve_is_507_and_the_session_keeps_its_inputs(
    make_server, tmp_path: Path
) -> None:
    free = free_bytes(tmp_path)
    assert free > 6 * GiB, f"this test needs more than 6 GiB free on {tmp_path}'s disk, it has {free / GiB:.1f} GiB"
    # Room for the small mask, none for a 12 GiB volume (4 GiB of slack either way for other writers).
    reserve = free - 4 * GiB
    server = make_server(DISK_RESERVE_BYTES=str(reserve))
    mask = write_nrrd(tmp_path / "mask.nrrd").read_bytes()
    with server.client() as client:
        session_id = create(client, "record", inputs={"mask": {"enabled": True}})
        assert client.put(f"/sessions/{session_id}/inputs/mask", content=mask, headers=OCTET).status_code == 200

        status, body = declared_only(server, f"/sessions/{session_id}/inputs/volume", 12 * GiB)
        assert status == 507
        assert (
            body["errors"][0]["detail"].startswith("not enough disk space for input volume: the server keeps ")
            and "(DISK_RESERVE_BYTES)" in body["errors"][0]["detail"]
        )

        assert client.get(f"/sessions/{session_id}").json()["data"] == {
            "status": "waiting",
            "needed": ["volume"],
            "info": "",
        }
    assert inputs_on_disk(server, session_id) == {"mask.nrrd": mask}  # intact, and no partial volume


def test_a_chunked_upload_is_507_when_the_reserve_exceeds_the_free_space(small_disk, make_server) -> None:
    # The session is created while there is room: a disk already under its reserve takes no new session.
    disk = small_disk(64)
    server = make_server(session_path=disk / "sessions", DISK_RESERVE_BYTES="16MiB")
    with server.client() as client:
        session_id = create(client, "copy")
        fill(disk, leave=12 * MiB)
        message = detail(
            client.put(f"/sessions/{session_id}/inputs/input_vol", content=chunks(b"\0" * MiB), headers=OCTET), 507
        )
        assert message.startswith(
            "not enough disk space for input input_vol: the server keeps 16 MiB free (DISK_RESERVE_BYTES)"
        )
        assert client.get(f"/sessions/{session_id}").json()["data"]["status"] == "waiting"
    assert inputs_on_disk(server, session_id) == {}


# -- sessions ------------------------------------------------------------------------------------


def test_sessions_beyond_max_sessions_are_503_until_one_ends(make_server, tmp_path: Path) -> None:
    server = make_server(MAX_SESSIONS="2")
    with server.client() as client:
        first = create(client, "copy")
        create(client, "copy")
        message = detail(client.post("/models/copy", json={"inputs": {}, "params": {}, "outputs": {}}), 503)
        assert (
            message == "the server holds its limit of 2 live sessions (MAX_SESSIONS); try again once some have finished"
        )
        # A finished session is no longer live: room for one more.
        source = write_nifti(tmp_path / "in.nii.gz", 0.01)
        assert (
            client.put(f"/sessions/{first}/inputs/input_vol", content=source.read_bytes(), headers=OCTET).status_code
            == 200
        )
        assert server.wait_status(first, {"complete", "failed"})["status"] == "complete"
        create(client, "copy")
