"""The smaller findings of the security issue, each reproduced against a real `inferserver serve`: parameter values
a model's command cannot take, a forged log line, a redirect built from the client's Host, answers outside the
envelope, and a multipart body on `check`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from . import rawhttp
from .conftest import Server, start_server, stop_and_check, write_nifti


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("findings"))  # LOG_FORMAT text, the default
    yield started
    stop_and_check([started])


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def details(response: httpx.Response) -> list[str]:
    assert response.headers["content-type"] == "application/json", response.text
    envelope = response.json()
    assert set(envelope) == {"errors"}, envelope
    return [error["detail"] for error in envelope["errors"]]


def session_dirs(server: Server) -> set[str]:
    return set(os.listdir(server.session_path))


@pytest.mark.parametrize(
    "params, detail",
    [
        # The issue: ~290 rounds of a 1 MiB string parameter filled a 300 MiB disk. Now nothing is stored.
        (
            {"label": {"value": "x" * 1_000_000}},
            "params/label: is 1000000 bytes long; the limit is 65536 bytes (MAX_STRING_PARAM_BYTES)",
        ),
        (
            {"label": {"value": "before\u0000after"}},
            "params/label: must not contain a NUL character (it cannot be passed to the model's command)",
        ),
        (
            {"ratio": {"value": 10**400}},
            "params/ratio: an integer of about 401 digits is outside the allowed range [0, 1]",
        ),
        (
            {"count": {"value": -(10**400)}},
            "params/count: an integer of about 401 digits is outside the allowed range [0, 100]",
        ),
    ],
)
def test_parameter_values_a_command_cannot_take_are_400_naming_them(
    server: Server, client: httpx.Client, params: dict, detail: str
) -> None:
    before = session_dirs(server)
    for _ in range(3):
        response = client.post("/models/record", json={"params": params})
        assert response.status_code == 400 and details(response) == [detail]
    assert session_dirs(server) == before


def test_a_string_at_the_limit_reaches_the_model_whole(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    value = "é" * (32 * 1024)  # 65536 bytes in UTF-8: exactly the limit
    response = client.post("/models/record", json={"params": {"label": {"value": value}}})
    assert response.status_code == 200, response.text
    session_id = response.json()["data"]["session_id"]
    volume = write_nifti(tmp_path / "v.nii.gz", 0.01)
    assert client.put(f"/sessions/{session_id}/inputs/volume", content=volume.read_bytes()).status_code == 200
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    argv = client.get(f"/sessions/{session_id}/outputs/argv").content.decode()
    assert value in argv


def test_control_characters_in_the_path_cannot_forge_log_lines(server: Server) -> None:
    forged = b"/nowhere%0a2026-01-01 00:00:00,000 INFO inferserver.access: GET /admin 200 1.0 ms%1b[2K%0d".replace(
        b" ", b"%20"
    )
    assert rawhttp.request(server.url, b"GET " + forged + b" HTTP/1.1\r\nHost: x").status == 404
    assert rawhttp.request(server.url, b"GET /sessions/a%0ab/logs HTTP/1.1\r\nHost: x").status == 404
    lines = log_lines_once(server, "GET /sessions/a\\x0ab/logs 404")
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)
    assert any(
        "INFO inferserver.access: GET /nowhere\\x0a2026-01-01 00:00:00,000 INFO inferserver.access: GET /admin "
        "200 1.0 ms\\x1b[2K\\x0d 404 " in line
        for line in lines
    )
    assert any("GET /sessions/a\\x0ab/logs 404" in line and line.endswith("session a\\x0ab") for line in lines)


def log_lines_once(server: Server, marker: str, timeout: float = 10) -> list[str]:
    """The server's log lines once one contains `marker`: a request's line is written after its answer."""
    deadline = time.monotonic() + timeout
    while marker not in (text := server.output()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text.splitlines()


@pytest.mark.parametrize("target", [b"/models/", b"/models/copy/", b"/sessions/12345678-1234-4234-9234-123456789abc/"])
def test_a_trailing_slash_is_404_never_a_redirect_to_the_clients_host(server: Server, target: bytes) -> None:
    answer = rawhttp.request(server.url, b"GET " + target + b" HTTP/1.1\r\nHost: evil.example")
    assert answer.status == 404 and "location" not in answer.headers
    assert answer.detail() == "Not Found"


def test_bad_ranges_on_an_output_are_in_the_envelope(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 0.05)
    session_id = client.post("/models/copy", json={}).json()["data"]["session_id"]
    assert client.put(f"/sessions/{session_id}/inputs/input_vol", content=source.read_bytes()).status_code == 200
    assert server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    url, size = f"/sessions/{session_id}/outputs/output_vol", source.stat().st_size

    beyond = client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    assert details(beyond) == [f"Range header: no range starts within the file's {size} bytes"]
    for header, detail in [
        ("bytes=5-2", "Range header: start must be less than end"),
        ("items=0-1", "Range header: Only support bytes range"),
        ("bytes", "Range header: Malformed range header."),
    ]:
        malformed = client.get(url, headers={"Range": header})
        assert malformed.status_code == 400 and details(malformed) == [detail], header
    good = client.get(url, headers={"Range": "bytes=0-3"})
    assert good.status_code == 206 and good.content == source.read_bytes()[:4]


def test_check_refuses_a_multipart_body_with_415(client: httpx.Client, tmp_path: Path) -> None:
    header = write_nifti(tmp_path / "in.nii.gz", 0.01).read_bytes()[:1024]
    multipart = client.post("/models/copy/inputs/input_vol/check", files={"file": ("in.nii.gz", header)})
    assert multipart.status_code == 415
    assert details(multipart) == ["Content-Type must be application/octet-stream, not multipart/form-data"]
    raw = client.post("/models/copy/inputs/input_vol/check", content=header)  # what the ablinfer client sends
    assert raw.status_code == 200 and raw.json()["data"]["acceptable"] is True
