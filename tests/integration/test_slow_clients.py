"""Slow and stalled clients against a real server with short HEADER_TIMEOUT and UPLOAD_IDLE_TIMEOUT: each
is answered and cut off within its timeout, leaves no partial file, and frees its input for the next upload."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from . import rawhttp
from .conftest import (
    Server,
    ServerFactory,
    shipped_gunicorn,
    start_server,
    stop_and_check,
    write_nifti,
)

TIMEOUT = 2.0  # HEADER_TIMEOUT and UPLOAD_IDLE_TIMEOUT of the servers here
SLACK = 2.0  # how late after its timeout a cut may come (a loaded CI machine)
SHORT = {"HEADER_TIMEOUT": str(TIMEOUT), "UPLOAD_IDLE_TIMEOUT": str(TIMEOUT)}
OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("slow"), **SHORT)
    yield server
    stop_and_check([server])


@pytest.fixture
def session_id(server: Server) -> str:
    with server.client() as client:
        response = client.post("/models/copy", json={"inputs": {}, "params": {}, "outputs": {}})
        assert response.status_code == 200, response.text
        return response.json()["data"]["session_id"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_nifti(tmp_path_factory.mktemp("volume") / "v.nii.gz", 0.2).read_bytes()


def until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took (at most `limit`)."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {limit} s (received {received[:200]!r})") from None
    except ConnectionResetError:
        pass  # closed with data of ours unread: as closed as it gets
    return received, time.monotonic() - started


def answer(received: bytes) -> tuple[int, str]:
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, " | ".join(e["detail"] for e in json.loads(body)["errors"])


def upload_head(session_id: str, framing: str) -> bytes:
    return (
        f"PUT /sessions/{session_id}/inputs/input_vol HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n"
    ).encode()


def assert_input_free(server: Server, session_id: str, volume: bytes) -> None:
    """No partial file is left, the session still waits for the input, and a new upload of it is taken at once."""
    inputs = server.session_path / session_id / "inputs"
    assert list(inputs.iterdir()) == [], f"partial file left: {list(inputs.iterdir())}"
    with server.client() as client:
        status = client.get(f"/sessions/{session_id}").json()["data"]
        assert status["status"] == "waiting" and status["needed"] == ["input_vol"], status
        retry = client.put(f"/sessions/{session_id}/inputs/input_vol", content=volume, headers=OCTET)
        assert retry.status_code == 200, retry.text
    # the run ends here: a server stopped mid-run keeps its container for the next start
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"


# -- the request head ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET / HTTP/1.1\r\nHost: x\r\n", b"PUT /sessions/x/inputs/input_vol HTTP/1.1\r\nContent-Le"],
    ids=["nothing", "half-headers", "half-a-header"],
)
def test_a_head_that_never_ends_is_408_and_closed_within_the_header_timeout(server: Server, sent: bytes) -> None:
    with rawhttp.connect(server.url) as sock:
        sock.sendall(sent)
        received, took = until_closed(sock, TIMEOUT + SLACK)
    assert took >= TIMEOUT - 0.5
    if sent:
        status, detail = answer(received)
        assert status == 408
        assert detail == "the request line and headers did not arrive within 2 s (HEADER_TIMEOUT)"


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_header_timeout(server: Server) -> None:
    head = b"GET /models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with rawhttp.connect(server.url) as sock:
        started = time.monotonic()
        closed = False
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if rawhttp.select.select([sock], [], [], 0.25)[0]:
                break  # the server answered
        received, _ = until_closed(sock, TIMEOUT + SLACK)
    took = time.monotonic() - started
    assert TIMEOUT - 0.5 <= took <= TIMEOUT + SLACK
    assert closed or answer(received)[0] == 408


def test_70000_bytes_of_headers_sent_at_once_are_431(server: Server) -> None:
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 60) for i in range(1000))  # ~68,900 bytes in one read
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + many
    assert 65536 < len(head) + 4 <= 70000
    reply = rawhttp.request(server.url, head.rstrip())
    assert reply.status == 431
    assert reply.detail() == "request line and headers exceed the limit of 65536 bytes (MAX_HEADER_BYTES)"
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/").status_code == 200


# -- the upload body ------------------------------------------------------------------------------

STALLED_DETAIL = (
    "input input_vol: the upload sent less than 16 KiB in 2 s (UPLOAD_IDLE_TIMEOUT); "
    "it was dropped and the input can be uploaded again"
)


def test_a_body_shorter_than_its_content_length_is_cut_and_frees_the_input(
    server: Server, session_id: str, volume: bytes
) -> None:
    with rawhttp.connect(server.url) as sock:
        sock.sendall(upload_head(session_id, f"Content-Length: {len(volume)}") + volume[:20000])
        received, took = until_closed(sock, TIMEOUT + SLACK)
    assert answer(received) == (408, STALLED_DETAIL)
    assert took >= TIMEOUT - 0.5
    assert_input_free(server, session_id, volume)


def test_a_chunked_body_that_never_ends_is_cut_and_frees_the_input(
    server: Server, session_id: str, volume: bytes
) -> None:
    piece = volume[:20000]
    with rawhttp.connect(server.url) as sock:
        sock.sendall(upload_head(session_id, "Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(piece), piece))
        received, took = until_closed(sock, TIMEOUT + SLACK)
    assert answer(received) == (408, STALLED_DETAIL)
    assert took >= TIMEOUT - 0.5
    assert_input_free(server, session_id, volume)


def test_a_body_sent_a_byte_a_second_is_cut_and_frees_the_input(server: Server, session_id: str, volume: bytes) -> None:
    with rawhttp.connect(server.url) as sock:
        sock.sendall(upload_head(session_id, f"Content-Length: {len(volume)}") + volume[:20000])
        started = time.monotonic()
        for byte in volume[20000:20100]:  # 16 KiB came at once: the trickle starts with a fresh allowance
            if rawhttp.select.select([sock], [], [], 0.25)[0]:
                break  # the server answered
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        received, _ = until_closed(sock, TIMEOUT + SLACK)
    assert answer(received) == (408, STALLED_DETAIL)
    assert TIMEOUT - 0.5 <= time.monotonic() - started <= TIMEOUT + SLACK
    assert_input_free(server, session_id, volume)


def test_a_json_body_that_stops_is_cut_too(server: Server) -> None:
    body = b'{"inputs": {}, "params": {}, "outputs": {}}'
    with rawhttp.connect(server.url) as sock:
        sock.sendall(
            b"POST /models/copy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:10])
        )
        received, took = until_closed(sock, TIMEOUT + SLACK)
    detail = "request body: the upload sent less than 16 KiB in 2 s (UPLOAD_IDLE_TIMEOUT); send the request again"
    assert answer(received) == (408, detail)
    assert took >= TIMEOUT - 0.5


def test_a_slow_but_steady_upload_is_not_cut(server: Server, session_id: str, volume: bytes) -> None:
    """16 KiB every second is slow, but never 2 s without 16 KiB: it lands whole."""
    body = volume[: 65536 * 2]
    with rawhttp.connect(server.url) as sock:
        sock.sendall(upload_head(session_id, f"Content-Length: {len(body)}"))
        for start in range(0, len(body), 16384):
            sock.sendall(body[start : start + 16384])
            time.sleep(0.8)
        reply = rawhttp.read_response(sock)
    assert reply.status == 200, reply
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"


# -- the same under the shipped gunicorn config ---------------------------------------------------


def test_the_shipped_gunicorn_config_bounds_the_head_too(make_server: ServerFactory) -> None:
    server = make_server(command=shipped_gunicorn, **SHORT)
    with rawhttp.connect(server.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        received, took = until_closed(sock, TIMEOUT + SLACK)
    assert answer(received)[0] == 408 and took >= TIMEOUT - 0.5
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 60) for i in range(1000))
    assert rawhttp.request(server.url, b"GET / HTTP/1.1\r\nHost: x\r\n" + many.rstrip()).status == 431


# -- open files -----------------------------------------------------------------------------------


def under_prlimit(soft: int, hard: int) -> Callable[[int], list[str]]:
    """`inferserver serve` started with this open-file limit (prlimit execs it: the pid is the server's)."""
    return lambda port: [
        "prlimit",
        f"--nofile={soft}:{hard}",
        sys.executable,
        "-m",
        "inferserver",
        "serve",
        "--port",
        str(port),
    ]


def open_fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def test_the_server_raises_its_open_file_limit_to_the_hard_limit(make_server: ServerFactory) -> None:
    server = make_server(command=under_prlimit(1024, 8192))
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == ["8192", "8192"], line
    said = "open files: soft limit raised from 1024 to 8192 (room for about 4096 log streams at once)"
    assert said in server.output()


def test_1100_half_open_connections_neither_lock_clients_out_nor_stay(make_server: ServerFactory) -> None:
    """The attack on a server started with the usual soft limit of 1024: 1100 connections that send half a head."""
    timeout = 5.0  # long enough for all 1100 to be open before the first is cut
    server = make_server(command=under_prlimit(1024, 4096), HEADER_TIMEOUT=str(timeout))
    before = open_fds(server)
    sockets = []
    started = time.monotonic()
    try:
        for _ in range(1100):
            sock = rawhttp.connect(server.url)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        opened = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/models").status_code == 200  # a legitimate client is served meanwhile
        assert open_fds(server) >= before + 1000  # they were all accepted: the limit held them
        assert time.monotonic() - started < timeout - 1, "opening the connections took too long to test this"
        while open_fds(server) > before + 5 and time.monotonic() - opened < timeout + SLACK:
            time.sleep(0.1)
        assert open_fds(server) <= before + 5, f"{open_fds(server) - before} connections still open"
    finally:
        for sock in sockets:
            sock.close()
    assert "Too many open files" not in server.output()
