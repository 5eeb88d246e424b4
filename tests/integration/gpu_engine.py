"""A private dockerd that believes it has NVIDIA GPUs, for tests of GPU requests on a host without one, and
of Docker outages (it can be stopped and started again on the same data root).

dockerd registers its NVIDIA device driver at start-up only when an executable named
`nvidia-container-runtime-hook` is on its PATH; the driver then accepts `DeviceRequests` for `gpu`, puts
`NVIDIA_VISIBLE_DEVICES` into the container's environment and adds the hook as an OCI prestart hook. A fake
hook that exits 0 (tests/images/fake-nvidia-hook) is enough.

The daemon never touches the system engine: its own data root, exec root (where it starts its own
containerd), pid file and socket, all under one short temporary directory (unix socket paths are limited
to ~107 bytes). It runs in its own network namespace (`unshare --net`): with `--bridge=none` dockerd
deletes the host's `docker0` interface at start-up (`removeDefaultBridgeInterface` in 20.10), which would
break every container the system engine starts on its default bridge. It also runs in its own mount
namespace, so its overlay mounts never appear on the host and vanish with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import REPO
from .conftest import Server, start_server

FAKE_HOOK = REPO / "tests" / "images" / "fake-nvidia-hook"
HOOK_NAME = "nvidia-container-runtime-hook"
START_SECONDS = 30
STOP_SECONDS = 20


class EngineError(Exception):
    """The private engine could not be started; the message carries the daemon's log tail."""


@dataclass
class Engine:
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    def hook_calls(self) -> list[tuple[str, dict]]:
        """(argv[1], OCI state) for each time the daemon's NVIDIA driver ran the fake hook, oldest first."""
        try:
            lines = (self.root / "hook.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        calls = []
        for line in lines:
            stage, _, state = line.partition(" ")
            calls.append((stage, json.loads(state)))
        return calls

    def docker(self, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "DOCKER_HOST": self.host}
        env.pop("DOCKER_CONTEXT", None)
        return subprocess.run(["docker", *args], env=env, input=input, capture_output=True, timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no daemon log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def start_engine(images: list[str]) -> Engine:
    """Start the private dockerd with the fake hook first on PATH and load `images` from the system engine."""
    root = Path(tempfile.mkdtemp(prefix="gpud-", dir="/tmp"))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKE_HOOK, bin_dir / HOOK_NAME)
    (bin_dir / HOOK_NAME).chmod(0o755)
    engine = Engine(root, _launch(root))
    try:
        _wait_until_up(engine)
        for image in images:
            _load_image(engine, image)
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def start_engine_or_fail(images: list[str], what: str) -> Engine:
    """`start_engine` for a fixture: a daemon that does not start fails the test, saying which and why."""
    try:
        return start_engine(images)
    except EngineError as exc:
        pytest.fail(f"{what} did not start: {exc}")


def restart_engine(engine: Engine) -> None:
    """Start the daemon again on the same data root and socket, after `stop_daemon`: an engine coming back."""
    engine.process = _launch(engine.root)
    _wait_until_up(engine)


def _launch(root: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PATH": f"{root / 'bin'}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "FAKE_NVIDIA_HOOK_LOG": str(root / "hook.log"),  # dockerd passes its environment to the hook
    }
    command = [
        "unshare",
        "--net",
        "--mount",
        "--propagation",
        "private",
        "--",
        "dockerd",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "dockerd.pid"),
        "-H",
        f"unix://{root / 'docker.sock'}",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--userland-proxy=false",
    ]
    with open(root / "dockerd.log", "ab") as log:
        # unshare execs dockerd (no --fork), so this pid is dockerd's.
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )


def engine_fixture(images: list[str]) -> Callable[..., Iterator[Engine]]:
    """A module-scoped `gpu_engine` fixture holding `images`; its teardown proves nothing was left behind."""

    @pytest.fixture(scope="module")
    def gpu_engine(fixture_images: None) -> Iterator[Engine]:
        engine = start_engine_or_fail(images, "the private GPU-capable dockerd")
        try:
            yield engine
        finally:
            left = leftover_containers(engine)
            root = engine.root
            stop_engine(engine)
            assert not left, f"containers left behind on the GPU engine: {left}"
            assert engine.process.returncode is not None
            assert not mounts_under(root), f"mounts left under {root}: {mounts_under(root)}"
            assert not root.exists(), f"{root} was not removed"

    return gpu_engine


def _wait_until_up(engine: Engine) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if engine.process.poll() is not None:
            raise EngineError(f"dockerd exited with {engine.process.returncode}:\n{engine.log_tail()}")
        if (
            engine.socket.exists()
            and engine.docker("info", "--format", "{{.ServerVersion}}", timeout=10).returncode == 0
        ):
            return
        if time.monotonic() > deadline:
            raise EngineError(f"dockerd did not answer within {START_SECONDS} s:\n{engine.log_tail()}")
        time.sleep(0.1)


def _load_image(engine: Engine, image: str) -> None:
    system_env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    saved = subprocess.run(["docker", "save", image], env=system_env, capture_output=True, timeout=120)
    if saved.returncode != 0:
        raise EngineError(f"docker save {image} on the system engine failed: {saved.stderr.decode(errors='replace')}")
    loaded = engine.docker("load", input=saved.stdout, timeout=120)
    if loaded.returncode != 0:
        reason = loaded.stderr.decode(errors="replace")
        raise EngineError(f"docker load of {image} failed: {reason}\n{engine.log_tail()}")


def leftover_containers(engine: Engine) -> list[str]:
    result = engine.docker("ps", "-aq")
    return result.stdout.decode().split()


def stop_engine(engine: Engine) -> None:
    """Remove its containers, stop the daemon, remove its directory."""
    if engine.process.poll() is None:
        left = leftover_containers(engine) if engine.socket.exists() else []
        if left:
            engine.docker("rm", "-f", *left)
    stop_daemon(engine)
    shutil.rmtree(engine.root, ignore_errors=True)


def stop_daemon(engine: Engine) -> None:
    """Stop the daemon by pid (it stops its containerd and, as `systemctl stop docker` does, its containers)
    and wait; its data root stays for `restart_engine`."""
    if engine.process.poll() is None:
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            # Its process group: dockerd and the containerd it started, nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(engine.process.pid, signal.SIGKILL)
            engine.process.wait()
    # The mounts lived in the daemon's own mount namespace; anything still visible on the host is a leak.
    for mount in reversed(mounts_under(engine.root)):
        subprocess.run(["umount", "-l", mount], capture_output=True)


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    return found


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_server_on(engine_host: str | None, tmp: Path, **settings: str) -> Server:
    """`start_server` with the server's DOCKER_HOST pointed at `engine_host` (None: the system engine)."""
    if engine_host is None:
        saved = os.environ.pop("DOCKER_HOST", None)
        try:
            return start_server(tmp, **settings)
        finally:
            if saved is not None:
                os.environ["DOCKER_HOST"] = saved
    with environ(DOCKER_HOST=engine_host):
        return start_server(tmp, **settings)
