"""The server's own image (Dockerfile), built offline by scripts/build-image.sh and run beside the host's engine:
the real ablinfer client runs a whole inference against the container's published port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inferserver.api.credentials import hash_password

from ..conftest import REPO, TEST_MODELS
from ..files import file_sha256, nifti_gz_like
from .conftest import Server, _docker, start_server, stop_and_check

IMAGE = "inferserver/server:test"
IMAGE_UID = 10001  # the Dockerfile's inferserver user


def docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.fail(f"this test mounts the engine's unix socket into the container; DOCKER_HOST={host} is not one")
    return Path(host.removeprefix("unix://"))


@pytest.fixture(scope="module")
def server_image(fixture_images: None) -> str:
    result = subprocess.run(
        [str(REPO / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "INFERSERVER_IMAGE": IMAGE},
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed:\n{result.stderr}")
    return IMAGE


def container_command(image: str, name: str, sessions: Path, *options: str) -> Callable[[int], list[str]]:
    """`docker run` in the foreground as the README shows it (plus `options`); signals reach gunicorn through
    the docker CLI."""
    socket = docker_socket()

    def command(port: int) -> list[str]:
        return [
            "docker",
            "run",
            "--rm",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:8000",
            "-v",
            f"{socket}:/var/run/docker.sock",
            "--group-add",
            str(socket.stat().st_gid),
            "-v",
            f"{TEST_MODELS}:/etc/inferserver/models:ro",
            "-v",
            f"{sessions}:/var/inferserver",
            "--health-interval",
            "1s",
            *options,
            image,
        ]

    return command


@pytest.fixture(scope="module")
def container(server_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    tmp = tmp_path_factory.mktemp("container")
    sessions = tmp / "sessions"
    sessions.mkdir()
    os.chown(sessions, IMAGE_UID, IMAGE_UID)  # the image runs as its own user, not root
    name = f"inferserver-test-{uuid.uuid4().hex[:8]}"
    server = start_server(tmp, command=container_command(server_image, name, sessions))
    yield server, name
    stop_and_check([server])
    _docker("rm", "-f", name)  # only if the stop above failed


def test_the_image_runs_as_a_non_root_user_with_conversion_and_turns_healthy(container: tuple[Server, str]) -> None:
    _, name = container
    assert _docker("exec", name, "id", "-un").stdout.strip() == "inferserver"
    imported = _docker("exec", name, "python3", "-c", "import SimpleITK")  # the convert extra is installed
    assert imported.returncode == 0, imported.stderr
    wait_healthy(name)


def wait_healthy(name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (health := _docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()) != "healthy":
        assert time.monotonic() < deadline, f"health check still {health!r} after {timeout} s"
        time.sleep(0.5)


def test_with_access_control_on_the_image_still_turns_healthy(server_image: str, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{hash_password('pw')}\n")
    users.chmod(0o644)
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    os.chown(sessions, IMAGE_UID, IMAGE_UID)
    name = f"inferserver-test-{uuid.uuid4().hex[:8]}"
    access = ("-v", f"{users}:/etc/inferserver/users:ro", "-e", "INFERSERVER_AUTH_USERS_FILE=/etc/inferserver/users")
    server = start_server(tmp_path, command=container_command(server_image, name, sessions, *access))
    try:
        wait_healthy(name)
        with server.client() as client:
            assert client.get("/models").status_code == 401
            models = client.get("/models", auth=("alice", "pw"))
            assert models.status_code == 200 and "copy" in models.json()["data"]
    finally:
        stop_and_check([server])
        _docker("rm", "-f", name)  # only if the stop above failed


def test_ablinfer_cli_against_the_container_copies_byte_for_byte(container: tuple[Server, str], tmp_path: Path) -> None:
    server, _ = container
    source, result = tmp_path / "ct.nii.gz", tmp_path / "out.nii.gz"
    digest = nifti_gz_like(source, 50)
    proc = subprocess.run(
        [sys.executable, "-m", "ablinfer.cli", "-s", server.url, "copy", "-i", str(source), "-o", str(result)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + server.output()
    assert file_sha256(result) == digest
    assert "copy: wrote" in proc.stdout  # the model container's log reached the client through the server container
    # The session's files are in the mounted volume, written by the image's user.
    (session_dir,) = [p for p in server.session_path.iterdir() if p.is_dir()]
    assert session_dir.stat().st_uid == IMAGE_UID


def test_the_image_serves_the_web_page_and_its_vendored_libraries(container: tuple[Server, str]) -> None:
    server, _ = container
    static = REPO / "src" / "inferserver" / "web" / "static"
    with server.client() as client:
        for relative in ("index.html", "operator.html", "js/run.js", "vendor/niivue/niivue.umd.js"):
            served = client.get(f"/ui/{relative}")
            assert served.status_code == 200, relative
            assert served.content == (static / relative).read_bytes(), relative
        assert "ui/vendor/swagger-ui/swagger-ui-bundle.js" in client.get("/docs").text
