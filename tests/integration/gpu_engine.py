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
namespace, so its overlay mounts never appear on the host and vanish with it. Both namespaces are held by a
`sleep` of their own (the engine's holder), so a daemon started again — after a stop or a `kill -9` that left its
containerd and containers running — enters the same ones and finds its mounts where it left them.

tests/integration/engine_bed.py builds its pool of TLS engines from these functions.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
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
from typing import Any

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
    # Holds the network and mount namespaces every start of the daemon enters.
    holder: subprocess.Popen[bytes]
    # Given to every start of dockerd after the ones all private engines share.
    daemon_args: tuple[str, ...] = ()

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

    def hook_calls(self) -> list[tuple[str, dict[str, Any]]]:
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


def start_engine(images: list[str], daemon_args: tuple[str, ...] = ()) -> Engine:
    """Start the private dockerd with the fake hook first on PATH and load `images` from the system engine."""
    engine = launch_engine(daemon_args)
    try:
        wait_until_up(engine)
        load_images(engine, images)
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def launch_engine(daemon_args: tuple[str, ...] = (), daemon_json: dict[str, object] | None = None) -> Engine:
    """Start the namespaces and the daemon in them without waiting for it: several can then start at once.
    `daemon_json` is the daemon's /etc/docker/daemon.json (its own: see `_hold_namespaces`)."""
    root = Path(tempfile.mkdtemp(prefix="gpud-", dir="/tmp"))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (root / "etc-docker").mkdir()
    if daemon_json is not None:
        (root / "etc-docker" / "daemon.json").write_text(json.dumps(daemon_json, indent=2) + "\n")
    shutil.copy(FAKE_HOOK, bin_dir / HOOK_NAME)
    (bin_dir / HOOK_NAME).chmod(0o755)
    try:
        holder = _hold_namespaces(root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        process = _launch(root, holder.pid, daemon_args)
    except BaseException:
        holder.kill()
        holder.wait()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Engine(root, process, holder, daemon_args)


def start_engine_or_fail(images: list[str], what: str) -> Engine:
    """`start_engine` for a fixture: a daemon that does not start fails the test, saying which and why."""
    try:
        return start_engine(images)
    except EngineError as exc:
        pytest.fail(f"{what} did not start: {exc}")


def restart_engine(engine: Engine) -> None:
    """Start the daemon again on the same data root and socket, after `stop_daemon` or a `kill -9`: an engine
    coming back."""
    if containerd_pid(engine) is None:
        # dockerd gives the containerd it starts a parent-death signal, so a killed daemon's containerd died too;
        # this machine's pid 1 does not reap it, and a daemon that finds its pid file on a zombie waits for it
        # forever. Without the file it starts a new containerd, which takes over the running containers' shims.
        _containerd_pid_file(engine).unlink(missing_ok=True)
    engine.process = _launch(engine.root, engine.holder.pid, engine.daemon_args)
    wait_until_up(engine)


def _hold_namespaces(root: Path) -> subprocess.Popen[bytes]:
    """A `sleep` in a new network and mount namespace, with its loopback up (a daemon may listen there) and an
    empty /etc/docker of its own (dockerd reads daemon.json there and keeps its identity in key.json: not the
    system engine's); returns once the namespaces exist, so entering them cannot race their creation."""
    script = (
        "ip link set lo up && { [ ! -d /etc/docker ] || mount --bind etc-docker /etc/docker; }"
        " && echo ready && exec sleep infinity"
    )
    with open(root / "holder.log", "ab") as log:
        holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=root,
            start_new_session=True,
        )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    holder.stdout.close()
    if line.strip() != b"ready":
        holder.kill()
        holder.wait()
        reason = (root / "holder.log").read_text(errors="replace")
        raise EngineError(f"could not make the engine's namespaces (unshare --net --mount): {reason}")
    return holder


def _launch(root: Path, holder_pid: int, daemon_args: tuple[str, ...]) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PATH": f"{root / 'bin'}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        "FAKE_NVIDIA_HOOK_LOG": str(root / "hook.log"),  # dockerd passes its environment to the hook
    }
    command = [
        "nsenter",
        f"--target={holder_pid}",
        "--net",
        "--mount",
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
        *daemon_args,
    ]
    with open(root / "dockerd.log", "ab") as log:
        # nsenter execs dockerd (it forks only to enter a pid namespace), so this pid is dockerd's.
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


def wait_until_up(engine: Engine) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if engine.process.poll() is not None:
            raise EngineError(f"dockerd exited with {engine.process.returncode}:\n{engine.log_tail()}")
        with contextlib.suppress(subprocess.TimeoutExpired):  # a daemon still starting may hold the request
            if (
                engine.socket.exists()
                and engine.docker("info", "--format", "{{.ServerVersion}}", timeout=10).returncode == 0
            ):
                return
        if time.monotonic() > deadline:
            raise EngineError(f"dockerd did not answer within {START_SECONDS} s:\n{engine.log_tail()}")
        time.sleep(0.1)


def load_images(engine: Engine, images: list[str]) -> None:
    """Copy `images` from the system engine, each `docker save` done once per test session."""
    for image in images:
        loaded = engine.docker("load", "--input", str(saved_image(image)), timeout=120)
        if loaded.returncode != 0:
            reason = loaded.stderr.decode(errors="replace")
            raise EngineError(f"docker load of {image} failed: {reason}\n{engine.log_tail()}")


@functools.cache
def saved_image(image: str) -> Path:
    """`image` saved from the system engine into a file that lives as long as the test session."""
    system_env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    target = Path(_saved_dir()) / (image.replace("/", "_").replace(":", "_") + ".tar")
    saved = subprocess.run(
        ["docker", "save", "--output", str(target), image], env=system_env, capture_output=True, timeout=120
    )
    if saved.returncode != 0:
        raise EngineError(f"docker save {image} on the system engine failed: {saved.stderr.decode(errors='replace')}")
    return target


@functools.cache
def _saved_dir() -> str:
    directory = tempfile.mkdtemp(prefix="engine-images-", dir="/tmp")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def leftover_containers(engine: Engine) -> list[str]:
    result = engine.docker("ps", "-aq")
    return result.stdout.decode().split()


def stop_engine(engine: Engine) -> None:
    """Remove its containers, stop the daemon, its containerd and namespaces, remove its directory."""
    if engine.process.poll() is None:
        left = leftover_containers(engine) if engine.socket.exists() else []
        if left:
            engine.docker("rm", "-f", *left)
    stop_daemon(engine)
    # A daemon that was killed (or runs with --live-restore) leaves its containerd behind.
    containerd = containerd_pid(engine)
    if containerd is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(containerd, signal.SIGKILL)
    if engine.holder.poll() is None:
        engine.holder.kill()
        engine.holder.wait()
    _unmount_under(engine.root)
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
    _unmount_under(engine.root)


def containerd_pid(engine: Engine) -> int | None:
    """The pid of the containerd this engine's daemon started, while it runs: the one whose command line names
    the engine's exec root (a recycled pid names something else) and that is not a zombie."""
    try:
        pid = int(_containerd_pid_file(engine).read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except (OSError, ValueError):
        return None
    return pid if str(engine.root).encode() in command else None


def _containerd_pid_file(engine: Engine) -> Path:
    return engine.root / "exec" / "containerd" / "containerd.pid"


def _unmount_under(root: Path) -> None:
    # The mounts live in the engine's own mount namespace; anything visible on the host is a leak to undo.
    for mount in reversed(mounts_under(root)):
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
