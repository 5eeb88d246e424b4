"""GPU requests: the server asks Docker for GPUs only when it should, a GPU-capable engine then hands the
container its assignment, and a CPU-only engine still runs models (or says plainly why it cannot).

There is no GPU here. The GPU-capable engine is a private dockerd with a fake NVIDIA hook on its PATH
(tests/integration/gpu_engine.py); the CPU-only engine is the system one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import SESSION_LABEL, Server, _docker, containers_removed, write_nifti
from .gpu_engine import Engine, engine_fixture, leftover_containers, start_server_on

RECORD_IMAGE = "inferserver-test/record:1"
# What dockerd 20.10's NVIDIA driver puts into the environment for DeviceRequests [{Count: -1, Capabilities:
# [["gpu"]]}]: every GPU, and no NVIDIA_DRIVER_CAPABILITIES ("gpu" is not a driver capability).
GPU_ENV = ["NVIDIA_VISIBLE_DEVICES=all"]


gpu_engine = engine_fixture([RECORD_IMAGE])


def run_record(server: Server, source: Path) -> tuple[str, dict, str | None]:
    """Run the record model with its env output enabled: (session id, final status, env.txt or None)."""
    with server.client() as client:
        body = {"inputs": {}, "params": {}, "outputs": {"env": {"enabled": True}}}
        created = client.post("/models/record", json=body)
        assert created.status_code == 200, created.text
        session_id = created.json()["data"]["session_id"]
        upload = client.put(
            f"/sessions/{session_id}/inputs/volume",
            content=source.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert upload.status_code == 200, upload.text
        status = server.wait_status(session_id, {"complete", "failed"}, timeout=60)
        env = None
        if status["status"] == "complete":
            response = client.get(f"/sessions/{session_id}/outputs/env")
            assert response.status_code == 200, response.text
            env = response.text
    return session_id, status, env


def nvidia_lines(env: str) -> list[str]:
    return [line for line in env.splitlines() if line.startswith("NVIDIA_")]


def created_containers(engine: Engine, session_id: str, since: float) -> list[str]:
    """Ids of the containers the engine created for this session (its event log outlives the container)."""
    result = engine.docker(
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        f"label={SESSION_LABEL}={session_id}",
        "--format",
        "{{.ID}}",
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().split()


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nifti(tmp_path_factory.mktemp("gpu-input") / "in.nii", 0.01)


@pytest.mark.parametrize(("mode", "staging"), [("all", "archive"), ("auto", "archive"), ("auto", "mount")])
def test_gpus_all_or_auto_on_a_gpu_engine_gives_the_container_every_gpu(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path, volume: Path, mode: str, staging: str
) -> None:
    # `auto` too: the engine lists no nvidia runtime, but its device driver serves the request.
    server = start_server_on(gpu_engine.host, tmp_path / "server", GPUS=mode, INPUT_STAGING=staging)
    servers.append(server)
    hooks_before = len(gpu_engine.hook_calls())
    since = time.time() - 1
    session_id, status, env = run_record(server, volume)
    assert status["status"] == "complete", (status, server.output(), gpu_engine.log_tail())
    assert env is not None and nvidia_lines(env) == GPU_ENV, env
    # The daemon's side: its NVIDIA driver ran the prestart hook for exactly the container it created.
    created = created_containers(gpu_engine, session_id, since)
    assert len(created) == 1, created
    hooks = gpu_engine.hook_calls()[hooks_before:]
    assert [(stage, state["id"]) for stage, state in hooks] == [("prestart", created[0])]
    assert containers_removed(lambda: leftover_containers(gpu_engine)) == []


def test_gpus_none_on_a_gpu_engine_asks_for_no_gpu(
    gpu_engine: Engine, servers: list[Server], tmp_path: Path, volume: Path
) -> None:
    server = start_server_on(gpu_engine.host, tmp_path / "server", GPUS="none")
    servers.append(server)
    hooks_before = len(gpu_engine.hook_calls())
    since = time.time() - 1
    session_id, status, env = run_record(server, volume)
    assert status["status"] == "complete", (status, server.output(), gpu_engine.log_tail())
    assert env is not None and nvidia_lines(env) == [], env
    assert len(created_containers(gpu_engine, session_id, since)) == 1
    assert gpu_engine.hook_calls()[hooks_before:] == []
    assert containers_removed(lambda: leftover_containers(gpu_engine)) == []


def _system_leftovers(session_id: str) -> list[str]:
    # Only this session's containers: other tests may be using the system engine at the same time.
    return _docker("ps", "-aq", "--filter", f"label={SESSION_LABEL}={session_id}").stdout.split()


def test_gpus_auto_on_a_cpu_only_engine_runs_without_gpus(
    fixture_images: None, servers: list[Server], tmp_path: Path, volume: Path
) -> None:
    server = start_server_on(None, tmp_path / "server")  # GPUS defaults to auto
    servers.append(server)
    for _ in range(2):  # the first run learns that the engine has no GPU driver, the second asks for none
        session_id, status, env = run_record(server, volume)
        assert status["status"] == "complete", (status, server.output())
        assert env is not None and nvidia_lines(env) == [], env
    log = server.client().get(f"/sessions/{session_id}/logs").text
    assert "no GPU support" not in log
    assert _system_leftovers(session_id) == []


def test_gpus_all_on_a_cpu_only_engine_fails_with_dockers_reason(
    fixture_images: None, servers: list[Server], tmp_path: Path, volume: Path
) -> None:
    server = start_server_on(None, tmp_path / "server", GPUS="all")
    servers.append(server)
    session_id, status, _ = run_record(server, volume)
    assert status["status"] == "failed", (status, server.output())
    # The old server's silent failure, now explained: Docker's own words reach the user.
    assert 'could not select device driver "" with capabilities: [[gpu]]' in status["info"], status
    assert _system_leftovers(session_id) == []
