"""Careless or hostile requests over raw HTTP against `inferserver serve`: each a clear 4xx in the envelope,
never a 500, never a file outside the session's directory."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import rawhttp
from .conftest import Server, write_nifti

SID = "12345678-1234-4234-9234-123456789abc"  # well-formed, belongs to no session


def files_under(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, names in os.walk(root) for f in names}


@pytest.fixture
def session_id(module_server: Server) -> Iterator[str]:
    with module_server.client() as client:
        response = client.post("/models/copy", json={"inputs": {}, "params": {}, "outputs": {}})
        assert response.status_code == 200, response.text
        yield response.json()["data"]["session_id"]


def get(server: Server, target: bytes) -> rawhttp.RawResponse:
    return rawhttp.request(server.url, b"GET " + target + b" HTTP/1.1\r\nHost: x")


@pytest.mark.parametrize(
    "name",
    [
        b"..%2F..%2F..%2Fetc%2Fpasswd",
        b"../../etc/passwd",
        b"..",
        b"%2e%2e",
        b"in%00put_vol",
        b"input_vol%00.nii",
        b"..%5C..%5Cwin.ini",
        b"x" * 4000,
    ],
)
def test_path_like_names_are_404_and_touch_no_file(
    module_server: Server, session_id: str, name: bytes, tmp_path: Path
) -> None:
    before = files_under(module_server.session_path.parent)
    sid = session_id.encode()
    answers = [
        rawhttp.request(
            module_server.url,
            b"PUT /sessions/" + sid + b"/inputs/" + name + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 5",
            b"hello",
        ),
        get(module_server, b"/sessions/" + sid + b"/outputs/" + name),
        get(module_server, b"/models/" + name),
        rawhttp.request(
            module_server.url,
            b"POST /models/copy/inputs/" + name + b"/check HTTP/1.1\r\nHost: x\r\nContent-Length: 4",
            b"NRRD",
        ),
        get(module_server, b"/sessions/" + name),
        get(module_server, b"/sessions/" + name + b"/logs"),
    ]
    for answer in answers:
        assert answer.status == 404, answer
        detail = answer.detail()
        assert len(detail) < 120 and "passwd" not in detail and "win.ini" not in detail
        assert str(module_server.session_path) not in detail and "\x00" not in detail
    assert files_under(module_server.session_path.parent) == before
    assert list((module_server.session_path / session_id / "inputs").iterdir()) == []


@pytest.mark.parametrize(
    "sid",
    [
        b"not-a-uuid",
        b"URN:UUID:" + SID.encode(),
        SID.replace("-", "").encode(),
        b"{" + SID.encode() + b"}",
        b"..",
        b"%00",
    ],
)
def test_session_ids_other_than_a_uuid_are_404(module_server: Server, sid: bytes) -> None:
    for target in (b"/sessions/" + sid, b"/sessions/" + sid + b"/logs", b"/sessions/" + sid + b"/outputs/output_vol"):
        answer = get(module_server, target)
        assert answer.status == 404 and "unknown session" in answer.detail(), answer


def test_oversized_json_is_413_naming_the_limit(module_server: Server) -> None:
    big = b'{"params": {"x": {"value": "' + b"a" * (1 << 20) + b'"}}}'
    declared = rawhttp.request(
        module_server.url,
        b"POST /models/copy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d" % len(big),
        big,
    )
    assert declared.status == 413 and "1048576" in declared.detail()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (big[i : i + 65536] for i in range(0, len(big), 65536))
    )
    streamed = rawhttp.request(
        module_server.url,
        b"POST /models/copy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        chunked + b"0\r\n\r\n",
    )
    assert streamed.status == 413 and "1048576" in streamed.detail()


def test_json_content_types(module_server: Server) -> None:
    body = b'{"inputs": {}, "params": {}, "outputs": {}}'

    def post(content_type: bytes | None) -> rawhttp.RawResponse:
        header = b"\r\nContent-Type: " + content_type if content_type is not None else b""
        return rawhttp.request(
            module_server.url,
            b"POST /models/copy HTTP/1.1\r\nHost: x" + header + b"\r\nContent-Length: %d" % len(body),
            body,
        )

    for refused in (
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/octet-stream",
    ):
        answer = post(refused)
        assert answer.status == 415, answer
        assert "must be application/json" in answer.detail() and refused.split(b";")[0].decode() in answer.detail()
    for accepted in (b"application/json", b"application/json; charset=utf-8", b"application/vnd.api+json", None):
        answer = post(accepted)
        assert answer.status == 200, (accepted, answer)


def test_upload_content_types(module_server: Server, tmp_path: Path) -> None:
    volume = write_nifti(tmp_path / "v.nii.gz", 0.1).read_bytes()
    with module_server.client() as client:
        for refused in ("text/plain", "application/json"):
            sid = client.post("/models/copy", json={}).json()["data"]["session_id"]
            answer = client.put(f"/sessions/{sid}/inputs/input_vol", content=volume, headers={"Content-Type": refused})
            assert (
                answer.status_code == 415 and "must be application/octet-stream" in answer.json()["errors"][0]["detail"]
            )
            assert client.get(f"/sessions/{sid}").json()["data"]["needed"] == ["input_vol"]
        # Declared multipart but not multipart: a clear 400, and the session keeps waiting.
        sid = client.post("/models/copy", json={}).json()["data"]["session_id"]
        answer = client.put(
            f"/sessions/{sid}/inputs/input_vol",
            content=volume,
            headers={"Content-Type": "multipart/form-data; boundary=x"},
        )
        assert (
            answer.status_code == 400 and "not a valid multipart/form-data body" in answer.json()["errors"][0]["detail"]
        )
        assert client.get(f"/sessions/{sid}").json()["data"]["needed"] == ["input_vol"]
        sid = client.post("/models/copy", json={}).json()["data"]["session_id"]
        untyped = rawhttp.request(
            module_server.url,
            f"PUT /sessions/{sid}/inputs/input_vol HTTP/1.1\r\nHost: x\r\nContent-Length: {len(volume)}".encode(),
            volume,
        )
        assert untyped.status == 200, untyped
        assert module_server.wait_status(sid, {"complete", "failed"})["status"] == "complete"


def wait_for(predicate, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("chunked", [False, True])
def test_client_leaving_mid_upload_leaves_the_session_waiting_and_no_file(
    module_server: Server, session_id: str, tmp_path: Path, chunked: bool
) -> None:
    inputs = module_server.session_path / session_id / "inputs"
    payload = write_nifti(tmp_path / "v.nii.gz", 1.2).read_bytes()[: 1 << 20]  # a real header, then 1 MB of 10 MB
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 10485760"
    sock = rawhttp.connect(module_server.url)
    sock.sendall(
        f"PUT /sessions/{session_id}/inputs/input_vol HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/octet-stream\r\n".encode()
        + framing
        + b"\r\n\r\n"
    )
    for start in range(0, len(payload), 65536):
        piece = payload[start : start + 65536]
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
    assert wait_for(lambda: any(inputs.iterdir())), "the upload never started writing"
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )  # close with a reset, mid-body
    sock.close()
    assert wait_for(lambda: not any(inputs.iterdir())), f"partial file left: {list(inputs.iterdir())}"
    with module_server.client() as client:
        status = client.get(f"/sessions/{session_id}").json()["data"]
        assert status["status"] == "waiting" and status["needed"] == ["input_vol"]
        # and the input can still be uploaded whole
        whole = write_nifti(tmp_path / "w.nii.gz", 0.1).read_bytes()
        assert (
            client.put(
                f"/sessions/{session_id}/inputs/input_vol",
                content=whole,
                headers={"Content-Type": "application/octet-stream"},
            ).status_code
            == 200
        )
    # let the run end here: a server stopped mid-run keeps the container for the next start to re-attach
    assert module_server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    assert "Traceback" not in module_server.output()


def test_huge_headers_on_check_are_431_at_once(module_server: Server) -> None:
    started = time.monotonic()
    answer = rawhttp.request(
        module_server.url,
        b"POST /models/copy/inputs/input_vol/check HTTP/1.1\r\nHost: x\r\n"
        b"X-Padding: " + b"a" * (8 << 20) + b"\r\nContent-Length: 4",
        b"NRRD",
    )
    assert answer.status == 431 and "65536 bytes" in answer.detail()
    assert time.monotonic() - started < 10
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(2000))
    assert rawhttp.request(module_server.url, b"GET / HTTP/1.1\r\nHost: x\r\n" + many.rstrip()).status == 431
    with httpx.Client(base_url=module_server.url) as client:  # the server is fine afterwards
        assert client.get("/").status_code == 200


def test_malformed_request_is_400_in_the_envelope(module_server: Server) -> None:
    answer = rawhttp.request(module_server.url, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope")
    assert answer.status == 400 and answer.detail()


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        (b"DELETE", b"/models", "GET"),
        (b"PUT", b"/models/copy", "GET, POST"),
        (b"POST", b"/sessions/" + SID.encode(), "GET, DELETE"),
        (b"GET", b"/sessions/" + SID.encode() + b"/inputs/x", "POST, PUT"),
        (b"GET", b"/uploads/" + b"0" * 32, "HEAD, PATCH, DELETE"),
        (b"PUT", b"/uploads", "POST, OPTIONS"),
    ],
)
def test_wrong_method_is_405_in_the_envelope(module_server: Server, method: bytes, target: bytes, allowed: str) -> None:
    answer = rawhttp.request(module_server.url, method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0")
    assert answer.status == 405 and answer.detail() == "Method Not Allowed"
    assert answer.headers["allow"] == allowed


@pytest.mark.parametrize(
    "target", [b"/nope", b"/models/copy/extra/path", b"/sessions", b"/%00", b"/static/../../etc/passwd"]
)
def test_unknown_route_is_404_in_the_envelope(module_server: Server, target: bytes) -> None:
    answer = get(module_server, target)
    assert answer.status == 404 and answer.detail() == "Not Found"
