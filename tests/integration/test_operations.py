"""/healthz, /readyz, /metrics and the request log on a real server."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Server, start_server, stop_and_check, write_nifti


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics:\n{text}"
    return float(found.group(1))


def test_health_ready_and_metrics_follow_a_run(make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server()
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    with server.client() as client:
        assert client.get("/healthz").json() == {"data": {"status": "ok"}}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text

        before = client.get("/metrics")
        assert before.headers["content-type"].startswith("text/plain")
        assert metric(before.text, 'inferserver_sessions{status="complete"}') == 0
        assert metric(before.text, "inferserver_gpu_requests_enabled") == 0  # no NVIDIA runtime on this engine

        waiting = client.post("/models/copy", json={}).json()["data"]["session_id"]
        sid = client.post("/models/copy", json={}).json()["data"]["session_id"]
        client.put(f"/sessions/{sid}/inputs/input_vol", content=source.read_bytes()).raise_for_status()
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
        size = len(client.get(f"/sessions/{sid}/outputs/output_vol").content)

        after = client.get("/metrics").text
    assert metric(after, 'inferserver_sessions{status="complete"}') == 1
    assert metric(after, 'inferserver_sessions{status="waiting"}') == 1
    assert metric(after, "inferserver_queue_length") == 0
    assert metric(after, 'inferserver_runs_total{outcome="complete"}') == 1
    assert metric(after, "inferserver_run_duration_seconds_count") == 1
    assert metric(after, "inferserver_queue_wait_seconds_count") == 1
    assert metric(after, "inferserver_uploaded_bytes_total") == source.stat().st_size
    assert metric(after, "inferserver_downloaded_bytes_total") == size == source.stat().st_size
    assert waiting in server.output()


def test_readyz_is_503_naming_the_engine_when_docker_is_gone(
    tmp_path: Path, fixture_images: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    server = start_server(tmp_path / "server")
    try:
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert client.get("/models").json()["data"]  # the API still answers
    finally:
        stop_and_check([server])
    assert ready.status_code == 503
    details = [e["detail"] for e in ready.json()["errors"]]
    assert len(details) == 1 and details[0].startswith("Docker engine unreachable"), details


def test_readyz_names_a_model_directory_that_is_missing(make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server(MODEL_PATH=str(tmp_path / "nowhere"))
    with server.client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"errors": [{"detail": f"model directory {tmp_path / 'nowhere'} does not exist"}]}


def test_json_log_lines_carry_the_session_id(make_server: Callable[..., Server], tmp_path: Path) -> None:
    server = make_server(LOG_FORMAT="json")
    source = write_nifti(tmp_path / "ct.nii.gz", 1)
    with server.client() as client:
        sid = client.post("/models/copy", json={}).json()["data"]["session_id"]
        client.put(f"/sessions/{sid}/inputs/input_vol", content=source.read_bytes()).raise_for_status()
        assert server.wait_status(sid, {"complete", "failed"})["status"] == "complete"
    time.sleep(0.5)  # the last request's line is written once its answer has gone out
    entries = [json.loads(line) for line in server.output().splitlines() if line.strip()]
    ours = [e for e in entries if e.get("session_id") == sid]
    requests = [e for e in ours if e["logger"] == "inferserver.access"]
    assert {(e["method"], e["path"], e["status"]) for e in requests} >= {
        ("PUT", f"/sessions/{sid}/inputs/input_vol", 200),
        ("GET", f"/sessions/{sid}", 200),
    }
    assert all(isinstance(e["duration_ms"], float) for e in requests)
    states = " | ".join(e["message"] for e in ours if e["logger"] != "inferserver.access")
    for state in ("created", "queued", "working", "complete"):
        assert state in states, states
