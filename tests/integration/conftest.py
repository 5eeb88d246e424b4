"""Integration fixtures: a real Docker engine, the offline fixture images, and `inferserver serve` on a real socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from ablinfer.remote import DispatchRemote

from ..conftest import REPO, TEST_MODELS

if TYPE_CHECKING:
    from .engine_bed import EngineBed
    from .postgres import Postgres

SESSION_LABEL = "org.inferserver.session"


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    try:
        result = _docker("info", "--format", "{{.ServerVersion}}")
    except FileNotFoundError:
        pytest.fail("the docker CLI is not installed: run scripts/setup.sh (installs Debian's docker.io)")
    if result.returncode != 0:
        pytest.fail(f"no Docker engine answers (`docker info`: {result.stderr.strip()}); run scripts/docker-engine.sh")


def _build(script: Path, what: str) -> None:
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building {what} failed ({script}):\n{result.stdout}\n{result.stderr}")


@pytest.fixture(scope="session")
def fixture_images(docker_engine: None) -> None:
    _build(REPO / "tests" / "images" / "build.sh", "the fixture images")


@pytest.fixture(scope="session")
def example_images(docker_engine: None) -> None:
    _build(REPO / "examples" / "build.sh", "the example model images")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    session_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    tmp: Path
    model_path: Path
    settings: dict[str, str]
    stop_signal: int = signal.SIGINT

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_status(self, session_id: str, statuses: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                data = client.get(f"/sessions/{session_id}").json()["data"]
                if data["status"] in statuses or time.monotonic() > deadline:
                    return data
                time.sleep(0.1)


Launcher = Callable[[int], list[str]]


def serve_command(workers: int = 1) -> Launcher:
    """`inferserver serve` on a port, with `workers` uvicorn worker processes."""
    return lambda port: [sys.executable, "-m", "inferserver", "serve", "--port", str(port), "--workers", str(workers)]


# The default launcher: made once, so a default argument need not call a function.
SERVE = serve_command()


def gunicorn_command(workers: int, worker_class: str = "uvicorn.workers.UvicornWorker") -> Launcher:
    """gunicorn with uvicorn workers, as a production deployment runs the module-level app."""
    return lambda port: [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        worker_class,
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "5",
        "inferserver.app:app",
    ]


def shipped_gunicorn(port: int) -> list[str]:
    """gunicorn with the shipped deploy/gunicorn.conf.py, as the systemd unit runs it."""
    config = REPO / "deploy" / "gunicorn.conf.py"
    return [sys.executable, "-m", "gunicorn", "-c", str(config), "--bind", f"127.0.0.1:{port}", "inferserver.app:app"]


def start_server(
    tmp: Path,
    model_path: Path = TEST_MODELS,
    *,
    session_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
    command: Launcher = SERVE,
    **settings: str,
) -> Server:
    """`command` (default `inferserver serve`) on a free port; with `session_path`, a restart on an existing
    session directory."""
    port = free_port()
    session_path = session_path or tmp / "sessions"
    env = {
        **os.environ,
        **(extra_env or {}),
        "INFERSERVER_MODEL_PATH": str(model_path),
        "INFERSERVER_SESSION_PATH": str(session_path),
        **{f"INFERSERVER_{k}": v for k, v in settings.items()},
    }
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"server-{port}.log"
    with open(log_path, "wb") as log:
        argv = command(port)
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    # gunicorn treats SIGINT as a quick exit that skips the application's shutdown; SIGTERM is its graceful stop.
    stop_signal = signal.SIGTERM if "gunicorn" in argv else signal.SIGINT
    server = Server(
        f"http://127.0.0.1:{port}", session_path, process, log_path, tmp, model_path, dict(settings), stop_signal
    )
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise AssertionError(f"inferserver exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(server.url + "/", timeout=1).status_code in (200, 401):  # 401: access control on
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"inferserver did not answer within 30 s:\n{server.output()}")
        time.sleep(0.1)


def restart_server(server: Server) -> Server:
    """A new server process on the same session directory and settings (after a kill or a stop)."""
    return start_server(server.tmp, server.model_path, session_path=server.session_path, **server.settings)


def kill_server(server: Server) -> None:
    server.process.kill()  # SIGKILL: no shutdown code runs
    server.process.wait()


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(server.stop_signal)
        try:
            server.process.wait(40)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts (on any engine, e.g. the GPU tests' private one); stopped at its end."""
    started: list[Server] = []
    yield started
    for server in started:
        stop_server(server)


def leftover_containers(server: Server) -> list[str]:
    """Containers still present for this server's sessions (other servers may share the engine)."""
    ours = {p.name for p in server.session_path.iterdir()} if server.session_path.is_dir() else set()
    result = _docker(
        "ps", "-a", "--filter", f"label={SESSION_LABEL}", "--format", f'{{{{.ID}}}} {{{{.Label "{SESSION_LABEL}"}}}}'
    )
    return [cid for cid, session in (line.split() for line in result.stdout.splitlines()) if session in ours]


def containers_removed(listing: Callable[[], list[str]], timeout: float = 10) -> list[str]:
    """What `listing` shows once it is empty, or after `timeout` s: a finished run's container is removed
    just after its outcome is recorded, so a client may see `complete` a moment before it is gone."""
    deadline = time.monotonic() + timeout
    while (left := listing()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def stop_and_check(servers: list[Server]) -> None:
    """Stop the servers; a container they leave behind fails the test (and is removed)."""
    left: list[str] = []
    for server in servers:
        stop_server(server)
        left += leftover_containers(server)
    if left:
        _docker("rm", "-f", *left)
        pytest.fail(f"containers left behind by the server: {left}")


class ServerFactory:
    """Starts servers (and restarts them on their session directory); all are stopped and checked at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Server] = []

    def __call__(self, command: Launcher = SERVE, session_path: Path | None = None, **settings: str) -> Server:
        return self._track(
            start_server(
                self.tmp / f"server{len(self.started)}", command=command, session_path=session_path, **settings
            )
        )

    def restart(self, server: Server) -> Server:
        return self._track(restart_server(server))

    def _track(self, server: Server) -> Server:
        self.started.append(server)
        return server


@pytest.fixture
def make_server(tmp_path: Path, fixture_images: None) -> Iterator[ServerFactory]:
    """Start servers with given settings; stop them and check no container was left behind."""
    factory = ServerFactory(tmp_path)
    yield factory
    stop_and_check(factory.started)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the test run (tests/integration/postgres.py)."""
    from .postgres import start_postgres, stop_postgres

    pg = start_postgres()
    yield pg
    stop_postgres(pg)


BACKENDS = ["sqlite", "postgresql"]


def database_settings(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Server settings for a session database of this kind: SQLite is the default; PostgreSQL a fresh database."""
    if backend == "sqlite":
        return {}
    return {"DATABASE_URL": request.getfixturevalue("postgres").create_database()}


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """Each test using it runs once per database backend: pass it to make_server(**database)."""
    return database_settings(request.param, request)


@pytest.fixture(scope="module", params=BACKENDS)
def backend_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fixture_images: None
) -> Iterator[Server]:
    """A server per database backend, shared by a module's tests."""
    server = start_server(
        tmp_path_factory.mktemp(f"server-{request.param}"), **database_settings(request.param, request)
    )
    yield server
    stop_and_check([server])


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, fixture_images: None) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_and_check([server])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount tmpfs disks of a given size in MiB; unmounted at the end (after the servers on them are stopped:
    request this fixture before make_server)."""
    mounted: list[Path] = []

    def mount(size_mib: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """A file taking all but `leave` bytes of the disk's free space."""
    filler = disk / "filler"
    with filler.open("ab") as out:
        while (room := free(disk) - leave) > 0:
            out.write(b"\0" * min(room, 1 << 20))
            out.flush()
    return filler


def write_nifti(path: Path, megabytes: float, seed: int = 0) -> Path:
    """A real NIfTI volume of about `megabytes` of float32 voxels (random, so gzip cannot shrink it)."""
    import nibabel as nib

    side = max(2, round((megabytes * 1e6 / 4) ** (1 / 3)))
    data = np.random.default_rng(seed).standard_normal((side, side, side), dtype=np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 1.0, 1.0])), str(path))
    return path


def write_nrrd(path: Path) -> Path:
    path.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 1\nsizes: 4\nencoding: raw\n\n\x01\x02\x03\x04")
    return path


def load_spec(model_id: str) -> dict:
    return json.loads((TEST_MODELS / f"{model_id}.json").read_text())


def create_and_upload(client: httpx.Client, model_id: str, source: Path, **params: object) -> str:
    body = {"inputs": {}, "params": {k: {"value": v} for k, v in params.items()}, "outputs": {}}
    response = client.post(f"/models/{model_id}", json=body)
    assert response.status_code == 200, response.text
    session_id = response.json()["data"]["session_id"]
    with source.open("rb") as stream:
        upload = client.put(
            f"/sessions/{session_id}/inputs/input_vol",
            content=stream,
            headers={"Content-Type": "application/octet-stream"},
        )
    assert upload.status_code == 200, upload.text
    return session_id


def stream_log(base_url: str, session_id: str) -> tuple[httpx.Headers, list[tuple[float, bytes]]]:
    """The log stream's headers, and each of its lines with the time it arrived."""
    lines = []
    with (
        httpx.Client(base_url=base_url, timeout=120) as client,
        client.stream("GET", f"/sessions/{session_id}/logs") as response,
    ):
        assert response.status_code == 200
        buffer = b""
        for chunk in response.iter_raw():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                lines.append((time.monotonic(), line))
    return response.headers, lines


def read_log(server: Server, session_id: str) -> list[tuple[float, bytes]]:
    """Each line of the log stream with the time it arrived, straight from the server."""
    headers, lines = stream_log(server.url, session_id)
    assert headers["x-accel-buffering"] == "no"  # NGINX consumes this header, so only a direct reader sees it
    assert headers["content-type"].startswith("text/plain")
    return lines


class QuietRemote(DispatchRemote):
    """The CLI's subclass does the same: no Slicer-side pre/post-processing outside Slicer."""

    def _run_processing(self, inp: bool) -> None:
        return


def run_remote(server: Server, model_id: str, config: dict) -> list[str]:
    """Run through DispatchRemote; return the progress lines the client reported."""
    lines: list[str] = []
    dispatch = QuietRemote({"base_url": server.url})
    model = dispatch.get_model(model_id)
    dispatch.run(model, config, progress=lambda stage, f1, f2, text: lines.append(text))
    return lines


# The engine test bed (tests/integration/engine_bed.py), here so that every module shares the one session-scoped
# bed. Imported when used: engine_bed.py builds on this module.
@pytest.fixture(scope="session")
def engine_bed(fixture_images: None) -> Iterator[EngineBed]:
    """Three private TLS engines with two fake GPUs each; its teardown proves nothing was left behind."""
    from .engine_bed import whole_bed

    yield from whole_bed()


@pytest.fixture
def bed(engine_bed: EngineBed) -> Iterator[EngineBed]:
    """The bed with every engine up; after the test, no container may be left on any engine."""
    from .engine_bed import bed_for_a_test

    yield from bed_for_a_test(engine_bed)
