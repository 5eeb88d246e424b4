"""Every 4xx answer of the wire contract, with the envelope and reason a client sees."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Server, write_nifti

OCTET = {"Content-Type": "application/octet-stream"}


def errors_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"errors"} and body["errors"], body
    return " | ".join(e["detail"] for e in body["errors"])


def new_session(client: httpx.Client, model_id: str = "record", **body: object) -> str:
    response = client.post(f"/models/{model_id}", json={"inputs": {}, "params": {}, "outputs": {}, **body})
    assert response.status_code == 200, response.text
    return response.json()["data"]["session_id"]


@pytest.fixture(scope="module")
def module_server(backend_server: Server) -> Server:
    """Every answer of the contract, on each session database (SQLite and PostgreSQL)."""
    return backend_server


@pytest.fixture
def client(module_server: Server) -> Iterator[httpx.Client]:
    with module_server.client() as client:
        yield client


def test_root_and_model_list(client: httpx.Client) -> None:
    root = client.get("/").json()["data"]
    assert root["server"] == "inferserver" and root["version"]
    assert set(client.get("/models").json()["data"]) >= {"copy", "record", "fail", "sleep", "noout", "lines"}


def test_unknown_model_is_404(client: httpx.Client) -> None:
    assert "unknown model 'nope'" in errors_of(client.get("/models/nope"), 404)
    assert "unknown model" in errors_of(client.post("/models/nope", json={}), 404)
    assert "unknown model" in errors_of(client.post("/models/nope/inputs/x/check", content=b"x"), 404)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"params": {"count": {"value": "many"}}}, "params/count"),
        ({"params": {"count": {"value": 101}}}, "params/count"),
        ({"params": {"ratio": {"value": 1.5}}}, "params/ratio"),
        ({"params": {"smooth": {"value": "yes"}}}, "params/smooth"),
        ({"params": {"mode": {"value": "Fast mode"}}}, "params/mode"),  # a label, not a value
        ({"params": {"nope": {"value": 1}}}, "params/nope"),
        ({"inputs": {"volume": {"enabled": False}}}, "inputs/volume"),
        ({"outputs": {"argv": {"enabled": False}}}, "outputs/argv"),
        ({"inputs": {"ghost": {"enabled": True}}}, "inputs/ghost"),
    ],
)
def test_bad_configuration_is_400_naming_the_field(client: httpx.Client, body: dict, expected: str) -> None:
    assert expected in errors_of(client.post("/models/record", json=body), 400)


def test_malformed_session_body_is_400(client: httpx.Client) -> None:
    errors_of(client.post("/models/record", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    errors_of(client.post("/models/record", json=["a", "list"]), 400)


def test_check_answers_from_the_header(client: httpx.Client, tmp_path: Path) -> None:
    nii = write_nifti(tmp_path / "x.nii", 0.1).read_bytes()[:1024]
    good = client.post("/models/record/inputs/volume/check", content=nii).json()["data"]
    assert good == {"filetype": ".nii", "acceptable": True, "can_convert": False}
    converted = client.post("/models/copy/inputs/input_vol/check", content=nii).json()["data"]
    assert converted == {"filetype": ".nii", "acceptable": True, "can_convert": True}  # .nii -> .nii.gz
    wrong = client.post("/models/copy/inputs/input_vol/check", content=b"ObjectType = Image\n").json()["data"]
    assert wrong == {"filetype": ".mha", "acceptable": False, "can_convert": False}
    assert "no input 'ghost'" in errors_of(client.post("/models/copy/inputs/ghost/check", content=nii), 404)
    assert "4096" in errors_of(client.post("/models/copy/inputs/input_vol/check", content=b"x" * 5000), 413)


def test_unknown_session_is_404(client: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    for response in (
        client.get(f"/sessions/{missing}"),
        client.get(f"/sessions/{missing}/logs"),
        client.get(f"/sessions/{missing}/outputs/argv"),
        client.put(f"/sessions/{missing}/inputs/volume", content=b"x", headers=OCTET),
        client.get("/sessions/not-a-uuid"),
    ):
        assert "unknown session" in errors_of(response, 404)


def test_waiting_session_refuses_logs_and_outputs(client: httpx.Client) -> None:
    session_id = new_session(client)
    status = client.get(f"/sessions/{session_id}").json()["data"]
    assert status == {"status": "waiting", "needed": ["volume"], "info": ""}
    assert "waiting for inputs" in errors_of(client.get(f"/sessions/{session_id}/logs"), 400)
    assert "not complete" in errors_of(client.get(f"/sessions/{session_id}/outputs/argv"), 400)
    assert "not enabled" in errors_of(client.get(f"/sessions/{session_id}/outputs/env"), 400)
    assert "no output 'ghost'" in errors_of(client.get(f"/sessions/{session_id}/outputs/ghost"), 404)
    assert "no input 'ghost'" in errors_of(
        client.put(f"/sessions/{session_id}/inputs/ghost", content=b"x", headers=OCTET), 404
    )


def test_wrong_file_type_is_400_and_the_session_keeps_waiting(
    client: httpx.Client, module_server: Server, tmp_path: Path
) -> None:
    session_id = new_session(client)
    gz = gzip.compress(b"ObjectType = Image\n" + write_nifti(tmp_path / "x.nii", 0.5).read_bytes())  # no conversion
    detail = errors_of(client.put(f"/sessions/{session_id}/inputs/volume", content=gz, headers=OCTET), 400)
    assert "must be a .nii file, but the upload is .mha.gz" in detail
    status = client.get(f"/sessions/{session_id}").json()["data"]
    assert status["status"] == "waiting" and status["needed"] == ["volume"]
    assert list((module_server.session_path / session_id / "inputs").iterdir()) == []  # no partial file left


def test_upload_replaces_while_waiting_and_is_refused_after(
    client: httpx.Client, module_server: Server, tmp_path: Path
) -> None:
    session_id = new_session(client, inputs={"mask": {"enabled": True}})
    first = b"NRRD0004\n" + b"a" * 100
    second = b"NRRD0004\n" + b"b" * 200
    for body in (first, second):
        answer = client.put(f"/sessions/{session_id}/inputs/mask", content=body, headers=OCTET).json()["data"]
        assert answer["sha256"] == hashlib.sha256(body).hexdigest()
    assert (module_server.session_path / session_id / "inputs" / "mask.nrrd").read_bytes() == second
    assert client.get(f"/sessions/{session_id}").json()["data"]["needed"] == ["volume"]

    volume = write_nifti(tmp_path / "v.nii", 0.1).read_bytes()
    assert client.put(f"/sessions/{session_id}/inputs/volume", content=volume, headers=OCTET).status_code == 200
    assert client.get(f"/sessions/{session_id}").json()["data"]["status"] in {"ready", "working", "complete"}
    assert "takes no more inputs" in errors_of(
        client.put(f"/sessions/{session_id}/inputs/mask", content=second, headers=OCTET), 400
    )


def test_concurrent_upload_of_one_input_is_409(client: httpx.Client, module_server: Server, tmp_path: Path) -> None:
    session_id = new_session(client)
    header = write_nifti(tmp_path / "v.nii", 0.1).read_bytes()
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield header
        release.wait(30)
        yield b"\0" * 1024

    first: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: first.setdefault(
            "r", module_server.client().put(f"/sessions/{session_id}/inputs/volume", content=slow_body(), headers=OCTET)
        )
    )
    thread.start()
    time.sleep(1.0)
    try:
        assert "already being uploaded" in errors_of(
            client.put(f"/sessions/{session_id}/inputs/volume", content=header, headers=OCTET), 409
        )
    finally:
        release.set()
        thread.join(30)
    assert first["r"].status_code == 200


def test_output_is_octet_stream_without_content_encoding(
    client: httpx.Client, module_server: Server, tmp_path: Path
) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", 1)
    session_id = new_session(client, "copy")
    assert (
        client.put(f"/sessions/{session_id}/inputs/input_vol", content=source.read_bytes(), headers=OCTET).status_code
        == 200
    )
    assert module_server.wait_status(session_id, {"complete", "failed"})["status"] == "complete"
    response = client.get(f"/sessions/{session_id}/outputs/output_vol", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in response.headers
    assert response.content == source.read_bytes()
